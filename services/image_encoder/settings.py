"""Settings of the image encoder service, read from PQ_IMAGE_ENCODER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from encoders.image.backbones import DEFAULT_IMAGE_BACKBONE, get_image_backbone
from services.common.settings import EnvSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ImageEncoderSettings(EnvSettings):
    """Configuration of `python -m services.image_encoder`; each field `x` is set by PQ_IMAGE_ENCODER_X."""

    env_prefix: ClassVar[str] = "PQ_IMAGE_ENCODER_"

    address: str = Field(
        default="127.0.0.1:50051",
        description="host:port to listen on; port 0 picks a free port.",
    )
    max_workers: int = Field(default=4, ge=1, description="Threads that serve calls concurrently.")
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request or response message in bytes; it bounds the encoded images of one call.",
    )
    grace_period_s: float = Field(
        default=5.0,
        ge=0.0,
        description="Seconds that calls in flight may keep running after a stop signal.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Maximum number of images per EmbedImages request; all of them share one forward pass.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
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

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

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
