"""gRPC servicer of pq.v1.ImageEncoderService, and the server built around it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
from PIL import Image

from encoders.image import (
    BackboneUnavailableError,
    ImageDecodeError,
    ImageEncoder,
    decode_image,
    load_image_encoder,
)
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc
from services.common.embedding_codec import to_message
from services.common.errors import InvalidArgumentError
from services.common.server import (
    ServiceServer,
    build_server,
    configure_logging,
    load_settings_or_exit,
    run_until_signalled,
)
from services.image_encoder.settings import ImageEncoderSettings

logger = logging.getLogger(__name__)

SERVICE_NAME = image_encoder_pb2.DESCRIPTOR.services_by_name["ImageEncoderService"].full_name


def decode_request_images(
    images: Sequence[bytes], *, max_batch_size: int, max_pixels: int
) -> list[Image.Image]:
    """Validate the batch size and decode every image to RGB.

    Raises InvalidArgumentError for an empty or oversized batch, and for the first image that fails
    to decode, naming it as images[i] with the reason.
    """
    if len(images) == 0:
        raise InvalidArgumentError("EmbedImagesRequest.images is empty; send at least one encoded image")
    if len(images) > max_batch_size:
        raise InvalidArgumentError(
            f"EmbedImagesRequest has {len(images)} images, more than the server's maximum batch size of "
            f"{max_batch_size}; split it into requests of at most {max_batch_size} images"
        )

    decoded = []
    for index, data in enumerate(images):
        try:
            decoded.append(decode_image(data, max_pixels=max_pixels))
        except ImageDecodeError as error:
            raise InvalidArgumentError(f"images[{index}] is invalid: {error}") from error
    return decoded


class ImageEncoderServicer(image_encoder_pb2_grpc.ImageEncoderServiceServicer):
    """Embeds the images of each EmbedImages call with one ImageEncoder in one forward pass."""

    def __init__(self, encoder: ImageEncoder, *, max_batch_size: int, max_image_pixels: int) -> None:
        self._encoder = encoder
        self._max_batch_size = max_batch_size
        self._max_image_pixels = max_image_pixels

    def EmbedImages(
        self,
        request: image_encoder_pb2.EmbedImagesRequest,
        context: grpc.ServicerContext,
    ) -> image_encoder_pb2.EmbedImagesResponse:
        started = time.perf_counter()
        images = decode_request_images(
            request.images, max_batch_size=self._max_batch_size, max_pixels=self._max_image_pixels
        )
        decoded = time.perf_counter()
        vectors = self._encoder.embed(images)  # (N, D) float32
        logger.debug(
            "embedded %d images: decoding %.1f ms, embedding %.1f ms",
            len(images),
            1000 * (decoded - started),
            1000 * (time.perf_counter() - decoded),
        )

        return image_encoder_pb2.EmbedImagesResponse(
            embeddings=[to_message(vector) for vector in vectors],
            model_id=self._encoder.model_id,
            embedding_dim=self._encoder.embedding_dim,
        )


def create_server(
    address: str,
    settings: ImageEncoderSettings | None = None,
    encoder: ImageEncoder | None = None,
) -> tuple[ServiceServer, int]:
    """Build an unstarted image encoder server bound to `address` ("host:port"; port 0 picks one).

    `settings` default to the PQ_IMAGE_ENCODER_* environment, and `encoder` defaults to the backbone,
    weights file and device those settings name. Call `start()` on the returned server.
    """
    if settings is None:
        settings = ImageEncoderSettings.from_env()
    if encoder is None:
        encoder = load_image_encoder(
            settings.backbone, device=settings.device, weights_path=settings.weights_path
        )
    servicer = ImageEncoderServicer(
        encoder, max_batch_size=settings.max_batch_size, max_image_pixels=settings.max_image_pixels
    )

    def register(server: grpc.Server) -> list[str]:
        image_encoder_pb2_grpc.add_ImageEncoderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    service = build_server(
        address,
        register,
        max_workers=settings.max_workers,
        max_message_bytes=settings.max_message_bytes,
    )
    return service, service.port


def describe(encoder: ImageEncoder) -> str:
    """Name the service and its model for log lines."""
    return (
        f"image encoder (backbone {encoder.spec.name}, model id {encoder.model_id}, "
        f"device {encoder.device})"
    )


def serve() -> None:
    """Run the image encoder service configured by PQ_IMAGE_ENCODER_* until SIGTERM or SIGINT.

    Exits with status 2 on invalid settings and 1 when the model cannot be loaded or the address
    cannot be bound, after logging why.
    """
    settings = load_settings_or_exit(ImageEncoderSettings.from_env, "image encoder")
    configure_logging(settings.log_level)

    try:
        encoder = load_image_encoder(
            settings.backbone, device=settings.device, weights_path=settings.weights_path
        )
        service, _port = create_server(settings.address, settings, encoder)
    except (ValueError, BackboneUnavailableError, OSError) as error:
        logger.error("image encoder not started on %s: %s", settings.address, error)
        raise SystemExit(1) from None

    run_until_signalled(service, describe(encoder), settings.grace_period_s)
