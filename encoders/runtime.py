"""The inference runtime of an encoder: its name, thread count, and the tolerance between runtimes.

Runtimes:
- "torch": PyTorch eager mode under `torch.inference_mode()`, the reference every other runtime is
  compared with.
- "torch_channels_last": PyTorch eager with the model and input in channels-last memory format
  (image backbones only).
- "onnx": the model exported to ONNX and run by ONNX Runtime (encoders.onnx_model).
- "auto": "onnx" when onnxruntime is importable and can run on the requested device, else "torch".

Embeddings of every runtime equal the torch reference within the encoder's `EmbeddingTolerance`,
so an encoder keeps one model id whatever its runtime. This module imports torch only when a
function needs it, so settings can check a runtime name cheaply.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TORCH = "torch"
TORCH_CHANNELS_LAST = "torch_channels_last"
ONNX = "onnx"
AUTO = "auto"

IMAGE_RUNTIMES = (TORCH, TORCH_CHANNELS_LAST, ONNX, AUTO)
TEXT_RUNTIMES = (TORCH, ONNX, AUTO)


class InferenceRuntimeError(RuntimeError):
    """The requested inference runtime cannot run the model: onnxruntime is missing, the ONNX export
    failed, or the exported model's output differs from the torch reference. The message names the
    setting to change."""


@dataclass(frozen=True)
class EmbeddingTolerance:
    """Largest accepted difference between a runtime's embeddings and the torch reference.

    A row passes when max |actual - reference| <= absolute + relative * max |reference|, both maxima
    taken over that row.
    """

    absolute: float
    relative: float

    def row_limits(self, reference: np.ndarray) -> np.ndarray:  # (N, D) -> (N,)
        """Return the largest accepted absolute difference of each row of `reference`."""
        scale = np.abs(reference).max(axis=1, initial=0.0)  # (N,)
        return self.absolute + self.relative * scale

    def violations(self, actual: np.ndarray, reference: np.ndarray) -> list[int]:
        """Return the indices of the rows of `actual` (N, D) that differ from `reference` beyond tolerance."""
        if actual.shape != reference.shape:
            raise ValueError(
                f"embeddings of shape {actual.shape} compared with a reference of shape {reference.shape}"
            )
        difference = np.abs(actual.astype(np.float64) - reference.astype(np.float64))  # (N, D)
        differences = difference.max(axis=1, initial=0.0)  # (N,)
        return np.flatnonzero(differences > self.row_limits(reference)).tolist()


def available_cores() -> int:
    """Return the number of cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> int | None:
    """Return `threads` unchanged, or raise ValueError naming the setting unless it is None or positive."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (all available cores), got {threads!r}")
    return threads


def apply_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count to `threads`, or leave torch's own setting when it is None.

    torch.set_num_threads is process-wide, so the last encoder loaded with `threads` sets it for all.
    """
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        logger.info("setting torch intra-op threads from %d to %d", torch.get_num_threads(), threads)
        torch.set_num_threads(threads)


def onnxruntime_installed() -> bool:
    """Return whether the onnxruntime package can be imported, without importing it."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnxruntime_runs_on(device: torch.device) -> bool:
    """Return whether onnxruntime is installed and has an execution provider for `device`.

    The CPU always qualifies. CUDA needs CUDAExecutionProvider, which the onnxruntime-gpu package has.
    """
    if not onnxruntime_installed():
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False


def resolve_runtime(runtime: str, allowed: tuple[str, ...], *, device: torch.device, encoder: str) -> str:
    """Check `runtime` against `allowed` and turn "auto" into a concrete runtime for `device`.

    "auto" picks "onnx" when onnxruntime can run on `device` and "torch" otherwise, so a CUDA device
    with a CPU-only onnxruntime stays on torch. Raises ValueError naming the setting for an unknown
    runtime.
    """
    if runtime not in allowed:
        choices = ", ".join(allowed)
        raise ValueError(f"invalid runtime {runtime!r} for the {encoder} encoder: use one of {choices}")
    if runtime != AUTO:
        return runtime
    if onnxruntime_runs_on(device):
        return ONNX
    if onnxruntime_installed():
        logger.info("runtime 'auto' uses torch on %s: onnxruntime has no execution provider for it", device)
    else:
        logger.info("runtime 'auto' uses torch: the onnxruntime package is not installed")
    return TORCH
