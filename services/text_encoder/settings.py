"""Settings of the text encoder service, read from PQ_TEXT_ENCODER_* environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, get_text_backbone
from services.common.settings import EnvSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class TextEncoderSettings(EnvSettings):
    """Configuration of `python -m services.text_encoder`. Each field `x` is set by PQ_TEXT_ENCODER_X."""

    env_prefix: ClassVar[str] = "PQ_TEXT_ENCODER_"

    address: str = Field(
        default="127.0.0.1:50052",
        description="host:port to listen on. Port 0 picks a free port.",
    )
    max_workers: int = Field(default=4, ge=1, description="Threads that serve calls concurrently.")
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request or response message in bytes.",
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
        description="Maximum number of texts per EmbedTexts request.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
    )
    backbone: str = Field(default=DEFAULT_TEXT_BACKBONE, description="Name of a registered text backbone.")
    max_tokens: int = Field(
        default=256,
        description="Maximum tokens per text, special tokens included. Longer texts are truncated.",
    )

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("backbone")
    @classmethod
    def _check_backbone(cls, value: str) -> str:
        get_text_backbone(value)
        return value

    @field_validator("max_tokens")
    @classmethod
    def _check_max_tokens(cls, value: int, info: ValidationInfo) -> int:
        # `backbone` is declared first, so it is in info.data unless its own validation failed.
        backbone = info.data.get("backbone")
        if backbone is not None:
            get_text_backbone(backbone).check_max_tokens(value)
        return value
