"""gRPC servicer of pq.v1.TextEncoderService, and the server built around it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from encoders.text import BackboneUnavailableError, InferenceRuntimeError, TextEncoder, load_text_encoder
from pq.v1 import text_encoder_pb2, text_encoder_pb2_grpc
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
from services.common.text_checks import has_embeddable_text
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
        verb = "is" if len(blank) == 1 else "are"
        raise InvalidArgumentError(
            f"{_list_indices(blank)} {verb} empty or only white space; send a non-blank title or "
            "description, or leave the text out of the request"
        )
    # The tokenizer drops control, zero-width, private-use and combining characters, so such a text
    # would be embedded as an empty one.
    invisible = [index for index, text in enumerate(texts) if not has_embeddable_text(text)]
    if invisible:
        verb = "contains" if len(invisible) == 1 else "contain"
        raise InvalidArgumentError(
            f"{_list_indices(invisible)} {verb} only white space and control, zero-width, private-use or "
            "combining characters, which the tokenizer drops; send visible text"
        )


def _list_indices(indices: Sequence[int]) -> str:
    listed = ", ".join(f"texts[{index}]" for index in indices[:_MAX_LISTED_INDICES])
    if len(indices) > _MAX_LISTED_INDICES:
        listed += f" and {len(indices) - _MAX_LISTED_INDICES} more"
    return listed


@dataclass(frozen=True)
class _TextResult:
    """The embedding of one text, as the forward pass of its batch computed it."""

    vector: np.ndarray  # (D,) float32, L2-normalised
    truncated: bool
    token_count: int


class TextEncoderServicer(text_encoder_pb2_grpc.TextEncoderServiceServicer):
    """Embeds the texts of EmbedTexts calls with one TextEncoder.

    Each call validates its texts in its own gRPC thread. With `batching`, a DynamicBatcher then
    embeds the texts of concurrent calls in one forward pass, padded to the longest text of the
    batch. Without it, each call runs its own forward pass, concurrently with the others.
    """

    def __init__(
        self, encoder: TextEncoder, *, max_batch_size: int, batching: BatchingConfig | None = None
    ) -> None:
        if batching is not None and batching.max_batch_size != max_batch_size:
            raise ValueError(
                f"batching.max_batch_size ({batching.max_batch_size}) differs from max_batch_size "
                f"({max_batch_size})"
            )
        self._encoder = encoder
        self._max_batch_size = max_batch_size
        self.batcher: DynamicBatcher[str, _TextResult] | None = None
        if batching is not None:
            self.batcher = DynamicBatcher(self._embed_batch, batching, name="text encoder")

    def EmbedTexts(
        self,
        request: text_encoder_pb2.EmbedTextsRequest,
        context: grpc.ServicerContext,
    ) -> text_encoder_pb2.EmbedTextsResponse:
        texts = list(request.texts)
        validate_texts(texts, self._max_batch_size)

        started = time.perf_counter()
        if self.batcher is None:
            results = self._embed_batch(texts)
        else:
            results = self.batcher.call(texts, context)
        logger.debug(
            "embedded %d texts (%d truncated) in %.1f ms, queue included",
            len(texts),
            sum(result.truncated for result in results),
            1000 * (time.perf_counter() - started),
        )

        return text_encoder_pb2.EmbedTextsResponse(
            results=[
                text_encoder_pb2.TextEmbedding(
                    embedding=to_message(result.vector),
                    truncated=result.truncated,
                    token_count=result.token_count,
                )
                for result in results
            ],
            model_id=self._encoder.model_id,
            embedding_dim=self._encoder.embedding_dim,
            max_tokens=self._encoder.max_tokens,
        )

    def stop(self, timeout_s: float) -> None:
        """Run the texts still queued and stop the batcher, waiting at most `timeout_s` seconds."""
        if self.batcher is not None:
            self.batcher.stop(timeout_s)

    def _embed_batch(self, texts: list[str]) -> list[_TextResult]:
        # NOTE: TextEncoder.embed tokenises inside, so with dynamic batching the batcher's one
        # worker thread tokenises every text. The gRPC threads could do it if the encoder offered
        # tokenising and embedding tokens as separate methods.
        embeddings = self._encoder.embed(texts)
        return [
            _TextResult(vector=vector, truncated=bool(truncated), token_count=int(token_count))
            for vector, truncated, token_count in zip(
                embeddings.vectors, embeddings.truncated, embeddings.token_counts, strict=True
            )
        ]


def load_encoder(settings: TextEncoderSettings, *, threads: int | None = None) -> TextEncoder:
    """Load the backbone, max_tokens, device and runtime that `settings` name.

    `threads` sets the runtime's intra-op threads (default: the cores available to the process).
    """
    return load_text_encoder(
        settings.backbone,
        max_tokens=settings.max_tokens,
        device=settings.device,
        runtime=settings.runtime,
        threads=threads,
        onnx_cache_dir=settings.onnx_cache_dir,
    )


def create_server(
    address: str,
    settings: TextEncoderSettings | None = None,
    encoder: TextEncoder | None = None,
) -> tuple[ServiceServer, int]:
    """Build an unstarted text encoder server bound to `address` ("host:port", port 0 picks a free one).

    `settings` default to the PQ_TEXT_ENCODER_* environment, and `encoder` defaults to the backbone,
    max_tokens, device and runtime those settings name. Call `start()` on the returned server. Its `stop()`
    also stops the dynamic batcher.
    """
    if settings is None:
        settings = TextEncoderSettings.from_env()
    if encoder is None:
        encoder = load_encoder(settings)
    servicer = TextEncoderServicer(
        encoder,
        max_batch_size=settings.max_batch_size,
        batching=settings.batching_config() if settings.dynamic_batching else None,
    )
    service = build_servicer_server(address, servicer, settings)
    return service, service.port


def build_servicer_server(
    address: str, servicer: TextEncoderServicer, settings: TextEncoderSettings
) -> ServiceServer:
    """Build an unstarted server around `servicer`, whose `stop()` also stops the servicer's batcher.

    `settings` give the thread count, message size limit and grace period. On a failed bind the
    batcher is stopped and OSError is raised.
    """

    def register(server: grpc.Server) -> list[str]:
        text_encoder_pb2_grpc.add_TextEncoderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return build_encoder_server(address, register, servicer.stop, settings)


def describe(encoder: TextEncoder) -> str:
    """Return the service's name with its backbone, model id, device and max_tokens, for log lines."""
    return (
        f"text encoder (backbone {encoder.spec.name}, model id {encoder.model_id}, "
        f"device {encoder.device}, runtime {encoder.runtime}, max_tokens {encoder.max_tokens})"
    )


def serve() -> None:
    """Run the text encoder service configured by PQ_TEXT_ENCODER_* until SIGTERM or SIGINT.

    Exits with status 2 on invalid settings and 1 when the model cannot be loaded or the address
    cannot be bound, after logging why.
    """
    settings = load_settings_or_exit(TextEncoderSettings.from_env, "text encoder")
    configure_logging(settings.log_level)
    torch_threads = set_torch_threads(settings.torch_threads)
    # A service logs lines, not the progress bar transformers draws while loading weights.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    try:
        encoder = load_encoder(settings, threads=torch_threads)
        service, _port = create_server(settings.address, settings, encoder)
    except (ValueError, BackboneUnavailableError, InferenceRuntimeError, OSError) as error:
        logger.error("text encoder not started on %s: %s", settings.address, error)
        raise SystemExit(1) from None

    logger.info(
        "text encoder threads: %d gRPC, %d torch; %s",
        settings.worker_threads(),
        torch_threads,
        settings.describe_batching(),
    )
    run_until_signalled(service, describe(encoder), settings.grace_period_s)
