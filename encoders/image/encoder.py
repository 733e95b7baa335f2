"""The image encoder: preprocessing, one batched forward pass, and a model id tied to the weights file.

The forward pass runs in one of the runtimes of encoders.runtime: torch eager, torch eager in
channels-last memory format, or ONNX Runtime. Their features agree within IMAGE_RUNTIME_TOLERANCE, so
the model id does not depend on the runtime.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from encoders.image.backbones import (
    DEFAULT_IMAGE_BACKBONE,
    BackboneUnavailableError,
    ImageBackboneSpec,
    get_image_backbone,
)
from encoders.onnx_model import OnnxModel, load_onnx_model, onnx_cache_path, resolve_onnx_cache_dir
from encoders.runtime import (
    AUTO,
    IMAGE_RUNTIMES,
    ONNX,
    TORCH,
    TORCH_CHANNELS_LAST,
    EmbeddingTolerance,
    InferenceRuntimeError,
    apply_torch_threads,
    check_threads,
    resolve_runtime,
)

logger = logging.getLogger(__name__)

_INTERPOLATIONS = {
    "bilinear": TF.InterpolationMode.BILINEAR,
    "bicubic": TF.InterpolationMode.BICUBIC,
}

# Preprocessing scales the shorter side to resize_size (256), so a 40,000,000 x 1 image, within the
# pixel limit, would be scaled to 10,240,000,000 x 256 pixels. A longer side beyond this many times
# the shorter one is cropped to it first, around the centre. The network's central crop lies inside
# the kept part, and images within the ratio are not changed.
MAX_ASPECT_RATIO = 16

# Pooled features of every runtime equal the torch eager features within this tolerance: per image,
# max |difference| <= 1e-4 * max |torch feature|. EfficientNet-Lite0 features are averages of ReLU6
# outputs (largest values about 3 to 6), and ONNX Runtime on the CPU differed by about 1e-5 in
# absolute terms, 2e-6 relative (tests/encoders/test_encoder_runtimes.py checks it on real images).
IMAGE_RUNTIME_TOLERANCE = EmbeddingTolerance(absolute=0.0, relative=1e-4)

# The example batch that the ONNX export traces and that checks the export against torch. Two
# images, because the exporter would fix a batch axis of size 1 in the graph.
_EXPORT_EXAMPLE_BATCH = 2


def crop_to_aspect_ratio(image: Image.Image, max_ratio: int = MAX_ASPECT_RATIO) -> Image.Image:
    """Crop the longer side of `image` to `max_ratio` times the shorter side, keeping the centre.

    Returns `image` itself when it is within the ratio.
    """
    width, height = image.size
    limit = max_ratio * min(width, height)
    if max(width, height) <= limit:
        return image
    if width > height:
        left = (width - limit) // 2
        return image.crop((left, 0, left + limit, height))
    top = (height - limit) // 2
    return image.crop((0, top, width, top + limit))


class ImageEncoder:
    """A loaded backbone that maps RGB images to pooled feature vectors.

    `model_id` is "<backbone>.<weights>.<input size>@<first 8 hex digits of the weights file's
    SHA-256>", so embeddings from different weights files never share a model id. It is the same for
    every runtime, whose features agree within IMAGE_RUNTIME_TOLERANCE. `runtime` is "torch",
    "torch_channels_last" or "onnx" (with `onnx_model`), and `device` is where the forward pass runs.
    """

    def __init__(
        self,
        spec: ImageBackboneSpec,
        model: nn.Module,
        *,
        device: torch.device,
        weights_sha256: str,
        runtime: str = TORCH,
        onnx_model: OnnxModel | None = None,
    ) -> None:
        if runtime not in (TORCH, TORCH_CHANNELS_LAST, ONNX):
            raise ValueError(f"invalid runtime {runtime!r}; use 'torch', 'torch_channels_last' or 'onnx'")
        if (runtime == ONNX) != (onnx_model is not None):
            raise ValueError("an onnx_model must be given with runtime 'onnx', and only with it")
        self.spec = spec
        self.model_id = f"{spec.name}.{spec.weights}.{spec.input_size}@{weights_sha256[:8]}"
        self.embedding_dim = spec.embedding_dim
        self.runtime = runtime
        self._onnx_model = onnx_model
        # With ONNX Runtime the torch module is kept on the CPU as the reference of the export.
        self.device = onnx_model.device if onnx_model is not None else device
        channels_last = runtime == TORCH_CHANNELS_LAST
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch_device = torch.device("cpu") if onnx_model is not None else device
        self._model = model.to(torch_device).to(memory_format=self._memory_format).eval()
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=torch_device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=torch_device).view(1, 3, 1, 1)
        self._interpolation = _INTERPOLATIONS[spec.interpolation]
        # Concurrent forward passes would compete for the same cores or GPU, so they run one at a
        # time. Preprocessing runs outside the lock and overlaps with the running pass.
        self._forward_lock = threading.Lock()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, crop and normalise RGB images into the network input (N, 3, H, W) float32 on CPU."""
        if len(images) == 0:
            size = self.spec.input_size
            return torch.empty((0, 3, size, size), dtype=torch.float32)
        pixels = self._crop_batch(images)  # (N, 3, H, W) uint8
        return self._normalise(pixels)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images in one forward pass; returns (N, D) float32 in input order."""
        if len(images) == 0:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        pixels = self._crop_batch(images)  # (N, 3, H, W) uint8

        with self._forward_lock:
            vectors = self._forward(pixels)  # (N, D)

        if vectors.shape != (len(images), self.embedding_dim):
            raise RuntimeError(
                f"{self.spec.name} returned features of shape {vectors.shape}, expected "
                f"({len(images)}, {self.embedding_dim})"
            )
        return vectors

    def _forward(self, pixels: torch.Tensor) -> np.ndarray:  # (N, 3, H, W) uint8 -> (N, D) float32
        with torch.inference_mode():
            if self._onnx_model is not None:
                # ONNX Runtime takes CPU arrays and copies them to its device itself.
                batch = self._normalise(pixels)  # (N, 3, H, W)
                return self._onnx_model.run({"pixels": batch.numpy()})

            # uint8 is a quarter of the float32 size to copy to an accelerator.
            batch = self._normalise(pixels.to(self.device))  # (N, 3, H, W)
            batch = batch.contiguous(memory_format=self._memory_format)
            features = self._model(batch)  # (N, D)
            return features.float().cpu().numpy()

    def _crop_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        crops = []
        for index, image in enumerate(images):
            if image.mode != "RGB":
                raise ValueError(
                    f"images[{index}] has mode {image.mode}; convert it to RGB first "
                    "(encoders.image.decoding.decode_image does)"
                )
            bounded = crop_to_aspect_ratio(image)
            resized = TF.resize(bounded, [self.spec.resize_size], interpolation=self._interpolation)
            cropped = TF.center_crop(resized, [self.spec.input_size, self.spec.input_size])
            crops.append(TF.pil_to_tensor(cropped))  # (3, H, W) uint8
        return torch.stack(crops)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) uint8 -> float32
        scaled = pixels.to(torch.float32) / 255.0
        return (scaled - self._mean.to(pixels.device)) / self._std.to(pixels.device)


def resolve_device(device: str) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch device; "auto" picks CUDA when available.

    Raises ValueError for an unknown name or a CUDA device that this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


_SHA256_CACHE: dict[tuple[str, int, int, int], str] = {}
_SHA256_CACHE_LOCK = threading.Lock()


def weights_sha256(path: Path, data: bytes) -> str:
    """Return the SHA-256 hex digest of a weights file whose bytes are `data`.

    Digests are cached per process by (path, size, modification time, inode), so loading the same
    file again skips hashing. Hashing the 19 MB EfficientNet-Lite0 file took about 30 ms on a 2-core
    x86 machine.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _SHA256_CACHE_LOCK:
        cached = _SHA256_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256(data).hexdigest()
    with _SHA256_CACHE_LOCK:
        _SHA256_CACHE[key] = digest
    return digest


def load_image_encoder(
    name: str = DEFAULT_IMAGE_BACKBONE,
    *,
    device: str = "auto",
    weights_path: Path | None = None,
    runtime: str = TORCH,
    threads: int | None = None,
    onnx_cache_dir: Path | None = None,
) -> ImageEncoder:
    """Load a registered backbone with its weights from a local file, in eval mode on `device`.

    `runtime` is "torch" (eager), "torch_channels_last", "onnx" (the pooled backbone exported to
    ONNX and run by ONNX Runtime) or "auto" ("onnx" when onnxruntime can run on the device, else
    "torch"). With "auto", a failed export logs a warning and falls back to "torch". `threads` sets
    ONNX Runtime's intra-op threads and, when given, torch's process-wide thread count. None keeps
    torch's setting and gives ONNX Runtime every core the process may use. ONNX exports are cached in
    `onnx_cache_dir` (default: encoders.onnx_model.default_onnx_cache_dir()).

    Raises ValueError for an unknown backbone, device or runtime or an invalid thread count, and
    BackboneUnavailableError when the weights file or the backbone's package is missing, unreadable or
    does not match the architecture. Raises InferenceRuntimeError when runtime "onnx" cannot be used.
    """
    spec = get_image_backbone(name)
    torch_device = resolve_device(device)
    check_threads(threads)
    resolved_runtime = resolve_runtime(runtime, IMAGE_RUNTIMES, device=torch_device, encoder="image")
    path = spec.resolve_weights_path(weights_path)

    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackboneUnavailableError(
            f"image backbone {name!r}: failed to read weights file {path}: {error}"
        ) from error
    digest = weights_sha256(path, data)

    try:
        # weights_only=True rejects pickled code, so a tampered file cannot run anything on load.
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise BackboneUnavailableError(
            f"image backbone {name!r}: weights file {path} is not a readable torch state_dict: {error}"
        ) from error
    if not isinstance(state_dict, Mapping):
        raise BackboneUnavailableError(
            f"image backbone {name!r}: weights file {path} contains a {type(state_dict).__name__}, not a "
            "state_dict mapping parameter names to tensors"
        )

    try:
        model = spec.build(state_dict)
    except RuntimeError as error:
        if isinstance(error, BackboneUnavailableError):
            raise
        raise BackboneUnavailableError(
            f"image backbone {name!r}: weights file {path} does not match the architecture: {error}"
        ) from error

    apply_torch_threads(threads)
    onnx_model = None
    if resolved_runtime == ONNX:
        cache_dir = resolve_onnx_cache_dir(onnx_cache_dir)
        try:
            onnx_model = _load_onnx_image_model(spec, model.eval(), digest, cache_dir, torch_device, threads)
        except InferenceRuntimeError as error:
            if runtime != AUTO:
                raise
            logger.warning("image encoder runtime 'auto' falls back to torch: %s", error)
            resolved_runtime = TORCH

    encoder = ImageEncoder(
        spec,
        model,
        device=torch_device,
        weights_sha256=digest,
        runtime=resolved_runtime,
        onnx_model=onnx_model,
    )
    logger.info(
        "loaded image backbone %s from %s as %s, runtime %s on %s",
        name, path, encoder.model_id, encoder.runtime, encoder.device,
    )
    return encoder


def _load_onnx_image_model(
    spec: ImageBackboneSpec,
    model: nn.Module,
    digest: str,
    cache_dir: Path,
    device: torch.device,
    threads: int | None,
) -> OnnxModel:
    # Seeded normal noise is about the range of normalised pixels, and it exercises every channel.
    generator = torch.Generator().manual_seed(0)
    size = spec.input_size
    example = torch.randn((_EXPORT_EXAMPLE_BATCH, 3, size, size), generator=generator)  # (2, 3, H, W)
    return load_onnx_model(
        model,
        (example,),
        onnx_cache_path(cache_dir, spec.name, digest),
        input_names=("pixels",),
        output_name="features",
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        tolerance=IMAGE_RUNTIME_TOLERANCE,
        device=device,
        threads=threads,
        setting=f"image encoder {spec.name!r} runtime 'onnx'",
    )
