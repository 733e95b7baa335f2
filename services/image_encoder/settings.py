"""Settings of the image encoder service, read from PQ_IMAGE_ENCODER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from encoders.image.backbones import DEFAULT_IMAGE_BACKBONE, get_image_backbone
from encoders.runtime import IMAGE_RUNTIMES
from services.common.cores import available_cores
from services.common.encoder_settings import EncoderServiceSettings


class ImageEncoderSettings(EncoderServiceSettings):
    """Configuration of `python -m services.image_encoder`; each field `x` is set by PQ_IMAGE_ENCODER_X."""

    env_prefix: ClassVar[str] = "PQ_IMAGE_ENCODER_"

    address: str = Field(
        default="127.0.0.1:50051",
        description="host:port to listen on; port 0 picks a free port.",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Maximum number of images per EmbedImages request, and per forward pass with dynamic batching."
        ),
    )
    runtime: str = Field(
        default="auto",
        description=(
            'Inference runtime: "torch" (PyTorch eager), "torch_channels_last", "onnx" (ONNX Runtime) or "auto" (onnx '
            "when onnxruntime can run on the device, else torch). Every runtime gives the torch "
            "embeddings within a tested tolerance, so the model id stays the same. On 2 CPU cores onnx "
            "ran EfficientNet-Lite0 3 to 5 times as fast as torch (docs/benchmarks.md)."
        ),
    )
    backbone: str = Field(default=DEFAULT_IMAGE_BACKBONE, description="Name of a registered image backbone.")
    weights_path: Path | None = Field(
        default=None,
        description="Weights file (a torch state_dict) to load instead of the backbone's default location.",
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description=(
            "Largest accepted image in pixels (width * height), checked from the file header before "
            "decoding. Pillow's own limit, about 89 million pixels, applies as well."
        ),
    )
    preprocess_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Calls that decode and resize their images at the same time, outside the forward pass. "
            "0 means the CPU cores available to the process."
        ),
    )

    @field_validator("weights_path", mode="before")
    @classmethod
    def _empty_weights_path_is_unset(cls, value: object) -> object:
        # Compose files often pass an unset variable through as "", which means the default location.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("backbone")
    @classmethod
    def _check_backbone(cls, value: str) -> str:
        get_image_backbone(value)
        return value

    def preprocess_thread_count(self) -> int:
        """Return the number of calls that may decode at once (`preprocess_threads`, 0 picks one)."""
        return self.preprocess_threads or available_cores()

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str) -> str:
        if value not in IMAGE_RUNTIMES:
            raise ValueError(f"unknown runtime {value!r}; use one of {', '.join(IMAGE_RUNTIMES)}")
        return value
