"""Image embeddings: safe decoding of untrusted bytes, a registry of CNN backbones, and the encoder."""

from encoders.image.backbones import (
    DEFAULT_IMAGE_BACKBONE,
    IMAGE_BACKBONES,
    BackboneUnavailableError,
    ImageBackboneSpec,
    get_image_backbone,
)
from encoders.image.decoding import ALLOWED_FORMATS, ImageDecodeError, decode_image
from encoders.image.encoder import IMAGE_RUNTIME_TOLERANCE, ImageEncoder, load_image_encoder, resolve_device
from encoders.runtime import IMAGE_RUNTIMES, InferenceRuntimeError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_IMAGE_BACKBONE",
    "IMAGE_BACKBONES",
    "IMAGE_RUNTIMES",
    "IMAGE_RUNTIME_TOLERANCE",
    "BackboneUnavailableError",
    "ImageBackboneSpec",
    "ImageDecodeError",
    "ImageEncoder",
    "InferenceRuntimeError",
    "decode_image",
    "get_image_backbone",
    "load_image_encoder",
    "resolve_device",
]
