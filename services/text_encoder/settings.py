"""Settings of the text encoder service, read from PQ_TEXT_ENCODER_* environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from encoders.runtime import TEXT_RUNTIMES
from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, get_text_backbone
from services.common.encoder_settings import EncoderServiceSettings


class TextEncoderSettings(EncoderServiceSettings):
    """Configuration of `python -m services.text_encoder`. Each field `x` is set by PQ_TEXT_ENCODER_X."""

    env_prefix: ClassVar[str] = "PQ_TEXT_ENCODER_"

    address: str = Field(
        default="127.0.0.1:50052",
        description="host:port to listen on. Port 0 picks a free port.",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Maximum number of texts per EmbedTexts request, and per forward pass with dynamic batching."
        ),
    )
    runtime: str = Field(
        default="torch",
        description=(
            'Inference runtime: "torch" (PyTorch eager), "onnx" (ONNX Runtime) or "auto" (onnx '
            "when onnxruntime can run on the device, else torch). Every runtime gives the torch "
            "embeddings within a tested tolerance, so the model id stays the same. On 2 CPU cores "
            "onnx answered single calls faster and torch served more texts per second at 32 "
            "concurrent calls (docs/benchmarks.md), so torch is the default."
        ),
    )
    backbone: str = Field(default=DEFAULT_TEXT_BACKBONE, description="Name of a registered text backbone.")
    max_tokens: int = Field(
        default=256,
        description="Maximum tokens per text, special tokens included. Longer texts are truncated.",
    )

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

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str) -> str:
        if value not in TEXT_RUNTIMES:
            raise ValueError(f"unknown runtime {value!r}; use one of {', '.join(TEXT_RUNTIMES)}")
        return value
