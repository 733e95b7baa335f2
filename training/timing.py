"""Wall-clock timing of the main job's stages."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class StageTimer:
    """Records the wall time of each named stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage `name` and log its start and end."""
        logger.info("stage %s: started", name)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            logger.error("stage %s: failed after %.1f s", name, time.perf_counter() - start)
            raise
        elapsed = time.perf_counter() - start
        self.seconds[name] = elapsed
        logger.info("stage %s: finished in %.1f s", name, elapsed)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
