"""Export of an encoder's torch module to ONNX, a file cache of the exports, and ONNX Runtime sessions.

An export is cached under a file name made of the model name, the first 16 hex digits of its
weights file's SHA-256, the torch version and EXPORT_FORMAT_VERSION. A new weights file or torch
release therefore never reuses an old export. Every load, of a new or a cached export, runs the
exported model and the torch module on the same example inputs and rejects the export unless
their outputs agree within the encoder's tolerance.

The exporter is torch.onnx.export(dynamo=True), which needs the onnx and onnxscript packages. The
TorchScript-based exporter (dynamo=False) is deprecated since torch 2.9 and is not used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.runtime import EmbeddingTolerance, InferenceRuntimeError, available_cores

logger = logging.getLogger(__name__)

# Raise this when the exported graph changes for the same weights and torch release, for example
# when a wrapper module or the export options change, so that old cache files are not reused.
EXPORT_FORMAT_VERSION = 1

# The exporter's graph optimiser logs hundreds of INFO lines per export through these loggers.
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


def default_onnx_cache_dir() -> Path:
    """Return $XDG_CACHE_HOME/pq/onnx, or ~/.cache/pq/onnx when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pq" / "onnx"


def onnx_cache_path(cache_dir: Path, name: str, weights_sha256: str) -> Path:
    """Return the cache file of the export of model `name` with weights whose SHA-256 is `weights_sha256`."""
    torch_version = torch.__version__.replace("+", "_")
    file_name = f"{name}-{weights_sha256[:16]}-torch{torch_version}-format{EXPORT_FORMAT_VERSION}.onnx"
    return Path(cache_dir) / file_name


def resolve_onnx_cache_dir(onnx_cache_dir: Path | str | None) -> Path:
    """Return `onnx_cache_dir` with ~ expanded, or default_onnx_cache_dir() when it is None."""
    if onnx_cache_dir is None:
        return default_onnx_cache_dir()
    return Path(onnx_cache_dir).expanduser()


class OnnxModel:
    """An exported model in an ONNX Runtime session with one output.

    `run` may be called from several threads at once, because InferenceSession.run is thread-safe.
    """

    def __init__(self, session: Any, path: Path, device: torch.device) -> None:
        self.path = path
        self.device = device
        self._session = session
        self._output_name: str = session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        """The execution providers of the session, in the order ONNX Runtime tries them."""
        return list(self._session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the model on named input arrays and return its output array."""
        return self._session.run([self._output_name], dict(inputs))[0]


def _import_onnxruntime(setting: str) -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise InferenceRuntimeError(
            f"{setting} needs the onnxruntime package, which is not installed; install it with "
            "`pip install onnxruntime` (onnxruntime-gpu for CUDA) or set the runtime to 'torch'"
        ) from error
    return onnxruntime


def _session_errors(onnxruntime: Any) -> tuple[type[BaseException], ...]:
    # ONNX Runtime's exceptions derive from Exception directly, not from RuntimeError.
    state = onnxruntime.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EPFail")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _providers(onnxruntime: Any, device: torch.device) -> list[str | tuple[str, dict[str, Any]]]:
    # NOTE: the CUDA branch has not run on a GPU yet. Should CUDA kernels differ from the torch
    # reference beyond the tolerance, load_onnx_model raises, and runtime "auto" falls back to torch.
    if device.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        logger.warning(
            "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu for it), so the ONNX model "
            "runs on the CPU although device %s was requested", device
        )
    return ["CPUExecutionProvider"]


def create_session(path: Path, *, device: torch.device, threads: int | None, setting: str) -> OnnxModel:
    """Open the ONNX file `path` in an ONNX Runtime session on `device` with `threads` intra-op threads.

    `threads` None means the cores this process may use. CUDA devices get CUDAExecutionProvider
    first when onnxruntime has it, and otherwise run on the CPU with a logged warning.
    Raises InferenceRuntimeError when onnxruntime is missing or cannot load the file.
    """
    onnxruntime = _import_onnxruntime(setting)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spin by default, which takes cores from preprocessing and other processes.
    # Without spinning, EfficientNet-Lite0 at batch 1 ran about twice as fast (55 against 27 images/s)
    # on a 2-core x86 VM that other jobs kept busy (load average 4).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=_providers(onnxruntime, device))
    except _session_errors(onnxruntime) as error:
        raise InferenceRuntimeError(f"{setting}: onnxruntime failed to load {path}: {error}") from error

    runs_on = device if session.get_providers()[0] == "CUDAExecutionProvider" else torch.device("cpu")
    if device.type == "cuda" and runs_on.type != "cuda":
        logger.warning(
            "onnxruntime could not start CUDAExecutionProvider for %s, so %s runs on the CPU", device, path
        )
    return OnnxModel(session, path, runs_on)


@contextlib.contextmanager
def _exporter_logs_at_warning() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [exporter_logger.level for exporter_logger in loggers]
    for exporter_logger in loggers:
        exporter_logger.setLevel(max(exporter_logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for exporter_logger, level in zip(loggers, levels, strict=True):
            exporter_logger.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_name: str,
    dynamic_shapes: tuple[dict[int, Any], ...],
    setting: str,
) -> None:
    """Export `module` (in eval mode, on the CPU) to the single ONNX file `path`, replacing it atomically.

    The file is written under a temporary name first, so a concurrent reader never sees half of it.
    `dynamic_shapes` has one {axis: torch.export.Dim} mapping per input. Raises InferenceRuntimeError
    when the exporter or its packages fail or the file cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    started = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(), _exporter_logs_at_warning():
            # The exporter warns that a Dim shared by several inputs keeps one name, which is intended.
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            # external_data=False writes one file. Protobuf limits such a file to 2 GB, far above the
            # 19 MB and 90 MB of the registered backbones.
            torch.onnx.export(
                module,
                example_inputs,
                str(temporary),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
            )
        os.replace(temporary, path)
    except (ImportError, torch.onnx.OnnxExporterError, OSError) as error:
        raise InferenceRuntimeError(
            f"{setting}: exporting the model to {path} failed: {error}. Check that the onnx and onnxscript "
            "packages are installed and the ONNX cache directory is writable, or set the runtime to 'torch'"
        ) from error
    finally:
        # exists() is False, rather than raising, when a parent of the path is not a directory.
        if temporary.exists():
            temporary.unlink()
    logger.info("exported %s to %s in %.1f s", type(module).__name__, path, time.perf_counter() - started)


def check_against_reference(
    model: OnnxModel,
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    tolerance: EmbeddingTolerance,
) -> float:
    """Run `model` and the torch `module` on the example inputs and return their max absolute difference.

    Raises InferenceRuntimeError naming the failing rows when the outputs differ beyond `tolerance`.
    """
    with torch.inference_mode():
        reference = module(*example_inputs).float().cpu().numpy()  # (N, D)
    feeds = {name: tensor.cpu().numpy() for name, tensor in zip(input_names, example_inputs, strict=True)}
    actual = model.run(feeds)  # (N, D)
    failing = tolerance.violations(actual, reference)
    difference = float(np.abs(actual - reference).max()) if actual.size else 0.0
    if failing:
        raise InferenceRuntimeError(
            f"the ONNX model {model.path} differs from the torch reference in rows {failing} of the example "
            f"batch (max absolute difference {difference:.3g}, tolerance {tolerance})"
        )
    return difference


def load_onnx_model(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    cache_path: Path,
    *,
    input_names: Sequence[str],
    output_name: str,
    dynamic_shapes: tuple[dict[int, Any], ...],
    tolerance: EmbeddingTolerance,
    device: torch.device,
    threads: int | None,
    setting: str,
) -> OnnxModel:
    """Open `module` in ONNX Runtime, exporting it to `cache_path` unless a cached export is there.

    `module` must be in eval mode on the CPU. A cached export that fails to load or to match the torch
    reference is exported again once. `setting` names the configuration in error messages, for
    example "image encoder runtime 'onnx'". Raises InferenceRuntimeError when no usable export results.
    """
    _import_onnxruntime(setting)

    def export() -> None:
        export_onnx(
            module, example_inputs, cache_path, input_names=input_names, output_name=output_name,
            dynamic_shapes=dynamic_shapes, setting=setting,
        )

    def open_and_check() -> OnnxModel:
        model = create_session(cache_path, device=device, threads=threads, setting=setting)
        difference = check_against_reference(model, module, example_inputs, input_names, tolerance)
        logger.info(
            "ONNX model %s runs on %s with providers %s; max absolute difference from torch %.2g",
            cache_path, model.device, model.providers, difference,
        )
        return model

    if not cache_path.is_file():
        export()
        return open_and_check()

    logger.info("reusing the cached ONNX export %s", cache_path)
    try:
        return open_and_check()
    except InferenceRuntimeError as error:
        logger.warning("the cached ONNX export is unusable, exporting it again: %s", error)
    export()
    return open_and_check()
