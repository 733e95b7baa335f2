"""Text encoder: sentence embeddings of product titles and descriptions from a transformer backbone."""

from encoders.runtime import TEXT_RUNTIMES, InferenceRuntimeError
from encoders.text.backbones import (
    DEFAULT_TEXT_BACKBONE,
    TEXT_BACKBONES,
    BackboneUnavailableError,
    TextBackboneSpec,
    get_text_backbone,
)
from encoders.text.encoder import TEXT_RUNTIME_TOLERANCE, TextEmbeddings, TextEncoder, load_text_encoder

__all__ = [
    "DEFAULT_TEXT_BACKBONE",
    "TEXT_BACKBONES",
    "TEXT_RUNTIMES",
    "TEXT_RUNTIME_TOLERANCE",
    "BackboneUnavailableError",
    "InferenceRuntimeError",
    "TextBackboneSpec",
    "TextEmbeddings",
    "TextEncoder",
    "get_text_backbone",
    "load_text_encoder",
]
