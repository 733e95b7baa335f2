"""Settings of the fusion predictor service, read from `PQ_PREDICTOR_*` environment variables.

The online store is configured separately by `features.config.FeatureStoreSettings` (`PQ_*`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from services.common.settings import ServiceSettings, SettingsError

DEFAULT_PORT = 50050


class PredictorSettings(ServiceSettings):
    """Configuration of `python -m services.fusion_predictor`."""

    env_prefix: ClassVar[str] = "PQ_PREDICTOR_"

    address: str = Field(
        default=f"127.0.0.1:{DEFAULT_PORT}",
        description='Listening address "host:port"; port 0 picks a free port.',
    )
    model_path: Path | None = Field(
        default=None,
        description="Checkpoint directory written by fusion.checkpoint.save_checkpoint. Required.",
    )
    image_encoder_address: str = Field(
        default="",
        description='Address "host:port" of the image encoder service; empty means none is configured.',
    )
    text_encoder_address: str = Field(
        default="",
        description='Address "host:port" of the text encoder service; empty means none is configured.',
    )
    encoder_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Maximum time in seconds for the encoder calls of one request, whose chunks run in parallel; "
            "a shorter client deadline wins."
        ),
    )
    encoder_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Maximum number of images or texts per encoder call; larger sets are split into calls "
            "sent in parallel. Keep it at most the encoders' PQ_IMAGE_ENCODER_MAX_BATCH_SIZE and "
            "PQ_TEXT_ENCODER_MAX_BATCH_SIZE (both 64 by default)."
        ),
    )
    max_batch_size: int = Field(
        default=1000,
        ge=1,
        description="Maximum number of requests in one PredictQualityBatch call.",
    )
    write_back: bool = Field(
        default=True,
        description="Write embeddings computed from inline content back to the online store.",
    )
    max_workers: int = Field(default=8, ge=1, description="Threads that serve calls concurrently.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device of the fusion model: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
    )

    @field_validator("model_path")
    @classmethod
    def _check_model_path(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory; set it to a fusion checkpoint directory")
        return value

    def require_model_path(self) -> Path:
        """Return `model_path`; raise SettingsError naming its variable when it is unset."""
        if self.model_path is None:
            raise SettingsError(
                f"{self.env_name('model_path')} is not set; set it to the checkpoint directory "
                "written by the training pipeline (it contains checkpoint.json)"
            )
        return self.model_path
