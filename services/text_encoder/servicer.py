"""gRPC servicer of pq.v1.TextEncoderService, and the server built around it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import grpc

from encoders.text import BackboneUnavailableError, TextEncoder, load_text_encoder
from pq.v1 import text_encoder_pb2, text_encoder_pb2_grpc
from services.common.embedding_codec import to_message
from services.common.errors import InvalidArgumentError
from services.common.server import (
    ServiceServer,
    build_server,
    configure_logging,
    load_settings_or_exit,
    run_until_signalled,
)
from services.text_encoder.settings import TextEncoderSettings

logger = logging.getLogger(__name__)

SERVICE_NAME = text_encoder_pb2.DESCRIPTOR.services_by_name["TextEncoderService"].full_name

# An error message lists at most this many invalid indices, then only their count.
_MAX_LISTED_INDICES = 5


def validate_texts(texts: Sequence[str], max_batch_size: int) -> None:
    """Raise InvalidArgumentError for an empty or oversized batch, or for blank texts (naming indices)."""
    if len(texts) == 0:
        raise InvalidArgumentError("EmbedTextsRequest.texts is empty; send at least one text")
    if len(texts) > max_batch_size:
        raise InvalidArgumentError(
            f"EmbedTextsRequest has {len(texts)} texts, more than the server's maximum batch size of "
            f"{max_batch_size}; split it into requests of at most {max_batch_size} texts"
        )

    blank = [index for index, text in enumerate(texts) if not text.strip()]
    if blank:
        listed = ", ".join(f"texts[{index}]" for index in blank[:_MAX_LISTED_INDICES])
        if len(blank) > _MAX_LISTED_INDICES:
            listed += f" and {len(blank) - _MAX_LISTED_INDICES} more"
        verb = "is" if len(blank) == 1 else "are"
        raise InvalidArgumentError(
            f"{listed} {verb} empty or only white space; send a non-blank title or description, "
            f"or leave the text out of the request"
        )


class TextEncoderServicer(text_encoder_pb2_grpc.TextEncoderServiceServicer):
    """Embeds the texts of each EmbedTexts call with one TextEncoder in one forward pass."""

    def __init__(self, encoder: TextEncoder, *, max_batch_size: int) -> None:
        self._encoder = encoder
        self._max_batch_size = max_batch_size

    def EmbedTexts(
        self,
        request: text_encoder_pb2.EmbedTextsRequest,
        context: grpc.ServicerContext,
    ) -> text_encoder_pb2.EmbedTextsResponse:
        texts = list(request.texts)
        validate_texts(texts, self._max_batch_size)

        started = time.perf_counter()
        embeddings = self._encoder.embed(texts)
        logger.debug(
            "embedded %d texts (%d truncated) in %.1f ms",
            len(texts),
            int(embeddings.truncated.sum()),
            1000 * (time.perf_counter() - started),
        )

        results = [
            text_encoder_pb2.TextEmbedding(
                embedding=to_message(vector),
                truncated=bool(truncated),
                token_count=int(token_count),
            )
            for vector, truncated, token_count in zip(
                embeddings.vectors, embeddings.truncated, embeddings.token_counts, strict=True
            )
        ]
        return text_encoder_pb2.EmbedTextsResponse(
            results=results,
            model_id=self._encoder.model_id,
            embedding_dim=self._encoder.embedding_dim,
            max_tokens=self._encoder.max_tokens,
        )


def create_server(
    address: str,
    settings: TextEncoderSettings | None = None,
    encoder: TextEncoder | None = None,
) -> tuple[ServiceServer, int]:
    """Build an unstarted text encoder server bound to `address` ("host:port", port 0 picks a free one).

    `settings` default to the PQ_TEXT_ENCODER_* environment, and `encoder` defaults to the backbone,
    max_tokens and device those settings name. Call `start()` on the returned server.
    """
    if settings is None:
        settings = TextEncoderSettings.from_env()
    if encoder is None:
        encoder = load_text_encoder(settings.backbone, max_tokens=settings.max_tokens, device=settings.device)
    servicer = TextEncoderServicer(encoder, max_batch_size=settings.max_batch_size)

    def register(server: grpc.Server) -> list[str]:
        text_encoder_pb2_grpc.add_TextEncoderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    service = build_server(
        address,
        register,
        max_workers=settings.max_workers,
        max_message_bytes=settings.max_message_bytes,
    )
    return service, service.port


def describe(encoder: TextEncoder) -> str:
    """Return the service's name with its backbone, model id, device and max_tokens, for log lines."""
    return (
        f"text encoder (backbone {encoder.spec.name}, model id {encoder.model_id}, "
        f"device {encoder.device}, max_tokens {encoder.max_tokens})"
    )


def serve() -> None:
    """Run the text encoder service configured by PQ_TEXT_ENCODER_* until SIGTERM or SIGINT.

    Exits with status 2 on invalid settings and 1 when the model cannot be loaded or the address
    cannot be bound, after logging why.
    """
    settings = load_settings_or_exit(TextEncoderSettings.from_env, "text encoder")
    configure_logging(settings.log_level)
    # A service logs lines, not the progress bar transformers draws while loading weights.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    try:
        encoder = load_text_encoder(settings.backbone, max_tokens=settings.max_tokens, device=settings.device)
        service, _port = create_server(settings.address, settings, encoder)
    except (ValueError, BackboneUnavailableError, OSError) as error:
        logger.error("text encoder not started on %s: %s", settings.address, error)
        raise SystemExit(1) from None

    run_until_signalled(service, describe(encoder), settings.grace_period_s)
