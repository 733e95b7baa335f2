"""CPU cores available to this process, and the torch thread count derived from them."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """Return the number of CPU cores this process may run on.

    It honours the CPU affinity mask (taskset, cpusets), which os.cpu_count() ignores. A CPU quota
    set through cgroups without a cpuset is not reflected in either.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def set_torch_threads(requested: int) -> int:
    """Set torch's intra-op thread count to `requested`, or to the available cores when it is 0.

    Returns the count set. The setting is global to the process, so only service entry points call
    it, before the model loads.
    """
    # Imported here so this module stays usable by services that never load torch.
    import torch

    threads = requested if requested > 0 else available_cores()
    torch.set_num_threads(threads)
    logger.debug("torch intra-op threads set to %d", threads)
    return threads
