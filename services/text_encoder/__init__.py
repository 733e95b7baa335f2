"""Text encoder service: pq.v1.TextEncoderService over gRPC, backed by encoders.text."""

from services.text_encoder.servicer import (
    SERVICE_NAME,
    TextEncoderServicer,
    build_servicer_server,
    create_server,
    serve,
)
from services.text_encoder.settings import TextEncoderSettings

__all__ = [
    "SERVICE_NAME",
    "TextEncoderServicer",
    "TextEncoderSettings",
    "build_servicer_server",
    "create_server",
    "serve",
]
