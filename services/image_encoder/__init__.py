"""Image encoder service: pq.v1.ImageEncoderService over gRPC, backed by encoders.image."""

from services.image_encoder.servicer import (
    SERVICE_NAME,
    ImageEncoderServicer,
    build_servicer_server,
    create_server,
    serve,
)
from services.image_encoder.settings import ImageEncoderSettings

__all__ = [
    "SERVICE_NAME",
    "ImageEncoderServicer",
    "ImageEncoderSettings",
    "build_servicer_server",
    "create_server",
    "serve",
]
