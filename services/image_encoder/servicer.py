"""gRPC servicer of pq.v1.ImageEncoderService, and the server built around it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import grpc
import numpy as np
from PIL import Image

from encoders.image import (
    BackboneUnavailableError,
    ImageDecodeError,
    ImageEncoder,
    InferenceRuntimeError,
    decode_image,
    load_image_encoder,
)
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc
from services.common.batching import BatchingConfig, DynamicBatcher
from services.common.cores import set_torch_threads
from services.common.embedding_codec import to_message
from services.common.encoder_server import build_encoder_server
from services.common.errors import InvalidArgumentError
from services.common.server import (
    ServiceServer,
    configure_logging,
    load_settings_or_exit,
    run_until_signalled,
)
from services.image_encoder.preprocessing import shrink_for_encoder
from services.image_encoder.settings import ImageEncoderSettings

logger = logging.getLogger(__name__)

SERVICE_NAME = image_encoder_pb2.DESCRIPTOR.services_by_name["ImageEncoderService"].full_name


def check_image_count(images: Sequence[bytes], max_batch_size: int) -> None:
    """Raise InvalidArgumentError for a request with no image or more than `max_batch_size` images."""
    if len(images) == 0:
        raise InvalidArgumentError("EmbedImagesRequest.images is empty; send at least one encoded image")
    if len(images) > max_batch_size:
        raise InvalidArgumentError(
            f"EmbedImagesRequest has {len(images)} images, more than the server's maximum batch size of "
            f"{max_batch_size}; split it into requests of at most {max_batch_size} images"
        )


def decode_request_images(images: Sequence[bytes], *, max_pixels: int) -> list[Image.Image]:
    """Decode every image to RGB.

    Raises InvalidArgumentError for the first image that fails to decode, naming it as images[i]
    with the reason.
    """
    decoded = []
    for index, data in enumerate(images):
        try:
            decoded.append(decode_image(data, max_pixels=max_pixels))
        except ImageDecodeError as error:
            raise InvalidArgumentError(f"images[{index}] is invalid: {error}") from error
    return decoded


class ImageEncoderServicer(image_encoder_pb2_grpc.ImageEncoderServiceServicer):
    """Embeds the images of EmbedImages calls with one ImageEncoder.

    Each call decodes and shrinks its images in its own gRPC thread, with at most
    `preprocess_threads` calls doing so at a time. With `batching`, a DynamicBatcher then embeds the
    images of concurrent calls in one forward pass. Without it, each call runs its own forward pass,
    and the encoder runs those one at a time.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        *,
        max_batch_size: int,
        max_image_pixels: int,
        batching: BatchingConfig | None = None,
        preprocess_threads: int = 1,
    ) -> None:
        if batching is not None and batching.max_batch_size != max_batch_size:
            raise ValueError(
                f"batching.max_batch_size ({batching.max_batch_size}) differs from max_batch_size "
                f"({max_batch_size})"
            )
        self._encoder = encoder
        self._max_batch_size = max_batch_size
        self._max_image_pixels = max_image_pixels
        self._preprocess_slots = threading.BoundedSemaphore(preprocess_threads)
        self.batcher: DynamicBatcher[Image.Image, np.ndarray] | None = None
        if batching is not None:
            self.batcher = DynamicBatcher(self._embed_batch, batching, name="image encoder")

    def EmbedImages(
        self,
        request: image_encoder_pb2.EmbedImagesRequest,
        context: grpc.ServicerContext,
    ) -> image_encoder_pb2.EmbedImagesResponse:
        check_image_count(request.images, self._max_batch_size)
        if self.batcher is not None:
            # Reject before decoding, so an overloaded server spends no time on the call.
            self.batcher.check_room(len(request.images))

        started = time.perf_counter()
        with self._preprocess_slots:
            images = decode_request_images(request.images, max_pixels=self._max_image_pixels)
            shrunk = [shrink_for_encoder(image, self._encoder.spec) for image in images]
        decoded = time.perf_counter()
        if self.batcher is None:
            vectors = self._embed_batch(shrunk)
        else:
            vectors = self.batcher.call(shrunk, context)
        logger.debug(
            "embedded %d images: decoding %.1f ms, queue and forward pass %.1f ms",
            len(shrunk),
            1000 * (decoded - started),
            1000 * (time.perf_counter() - decoded),
        )

        return image_encoder_pb2.EmbedImagesResponse(
            embeddings=[to_message(vector) for vector in vectors],
            model_id=self._encoder.model_id,
            embedding_dim=self._encoder.embedding_dim,
        )

    def stop(self, timeout_s: float) -> None:
        """Run the images still queued and stop the batcher, waiting at most `timeout_s` seconds."""
        if self.batcher is not None:
            self.batcher.stop(timeout_s)

    def _embed_batch(self, images: list[Image.Image]) -> list[np.ndarray]:
        vectors = self._encoder.embed(images)  # (N, D) float32
        return list(vectors)  # N rows of (D,)


def load_encoder(settings: ImageEncoderSettings, *, threads: int | None = None) -> ImageEncoder:
    """Load the backbone, weights file, device and runtime that `settings` name.

    `threads` sets the runtime's intra-op threads (default: the cores available to the process).
    """
    return load_image_encoder(
        settings.backbone,
        device=settings.device,
        weights_path=settings.weights_path,
        runtime=settings.runtime,
        threads=threads,
        onnx_cache_dir=settings.onnx_cache_dir,
    )


def create_server(
    address: str,
    settings: ImageEncoderSettings | None = None,
    encoder: ImageEncoder | None = None,
) -> tuple[ServiceServer, int]:
    """Build an unstarted image encoder server bound to `address` ("host:port"; port 0 picks one).

    `settings` default to the PQ_IMAGE_ENCODER_* environment, and `encoder` defaults to the backbone,
    weights file, device and runtime those settings name. Call `start()` on the returned server. Its `stop()`
    also stops the dynamic batcher.
    """
    if settings is None:
        settings = ImageEncoderSettings.from_env()
    if encoder is None:
        encoder = load_encoder(settings)
    servicer = ImageEncoderServicer(
        encoder,
        max_batch_size=settings.max_batch_size,
        max_image_pixels=settings.max_image_pixels,
        batching=settings.batching_config() if settings.dynamic_batching else None,
        preprocess_threads=settings.preprocess_thread_count(),
    )
    service = build_servicer_server(address, servicer, settings)
    return service, service.port


def build_servicer_server(
    address: str, servicer: ImageEncoderServicer, settings: ImageEncoderSettings
) -> ServiceServer:
    """Build an unstarted server around `servicer`, whose `stop()` also stops the servicer's batcher.

    `settings` give the thread count, message size limit and grace period. On a failed bind the
    batcher is stopped and OSError is raised.
    """

    def register(server: grpc.Server) -> list[str]:
        image_encoder_pb2_grpc.add_ImageEncoderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return build_encoder_server(address, register, servicer.stop, settings)


def describe(encoder: ImageEncoder) -> str:
    """Name the service and its model for log lines."""
    return (
        f"image encoder (backbone {encoder.spec.name}, model id {encoder.model_id}, "
        f"device {encoder.device}, runtime {encoder.runtime})"
    )


def serve() -> None:
    """Run the image encoder service configured by PQ_IMAGE_ENCODER_* until SIGTERM or SIGINT.

    Exits with status 2 on invalid settings and 1 when the model cannot be loaded or the address
    cannot be bound, after logging why.
    """
    settings = load_settings_or_exit(ImageEncoderSettings.from_env, "image encoder")
    configure_logging(settings.log_level)
    torch_threads = set_torch_threads(settings.torch_threads)

    try:
        encoder = load_encoder(settings, threads=torch_threads)
        service, _port = create_server(settings.address, settings, encoder)
    except (ValueError, BackboneUnavailableError, InferenceRuntimeError, OSError) as error:
        logger.error("image encoder not started on %s: %s", settings.address, error)
        raise SystemExit(1) from None

    logger.info(
        "image encoder threads: %d gRPC, %d preprocessing, %d torch; %s",
        settings.worker_threads(),
        settings.preprocess_thread_count(),
        torch_threads,
        settings.describe_batching(),
    )
    run_until_signalled(service, describe(encoder), settings.grace_period_s)
