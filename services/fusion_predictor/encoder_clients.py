"""gRPC clients of the image and text encoder services, with deadlines and error mapping.

Each call's deadline is the smaller of the configured encoder timeout and the time the predictor's
own caller has left minus `deadline_margin_s`, which leaves time to respond after an encoder timeout.
Inputs are sent in chunks of at most `max_items_per_call`, the encoders' maximum batch size, all in
flight at once. Encoder failures become service errors of the predictor:

    encoder status                      predictor error
    INVALID_ARGUMENT (for example a     InvalidArgumentError naming the predictor's request field
      corrupt image)
    UNAVAILABLE (cannot connect, or     UnavailableError naming the encoder address
      the TLS handshake failed)
    RESOURCE_EXHAUSTED (the encoder's   UnavailableError, because a retry later can succeed
      batching queue is full)
    DEADLINE_EXCEEDED                   DeadlineExceededError when the caller's deadline set the
                                        limit, UnavailableError when the encoder timeout did
    any other status                    ServiceError (INTERNAL) with the encoder's status and message

Every response's model id is checked against the checkpoint's, because vectors of another encoder
model would otherwise reach a fusion head trained on different features.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from pq.v1.embedding_pb2 import Embedding
from services.common import embedding_codec
from services.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ServiceError,
    UnavailableError,
)
from services.common.tls import ClientTls, open_channel

logger = logging.getLogger(__name__)

# Maximum wait, in milliseconds, before the channel to an encoder tries to connect again.
RECONNECT_BACKOFF_MS = 1000
# Text of the encoders' INVALID_ARGUMENT for a call with more items than their maximum batch size
# (services/image_encoder/servicer.py, services/text_encoder/servicer.py).
_BATCH_LIMIT_MARKER = "more than the server's maximum batch size"

# The encoders name a bad item by its index in their own request, as "images[3]" or "texts[3]".
_ITEM_INDEX = re.compile(r"\b(?:images|texts)\[(\d+)\]")

_Item = TypeVar("_Item", bytes, str)


class PendingEmbeddings:
    """Encoder calls in flight for one list of inputs; `result()` waits for all of them."""

    def __init__(
        self,
        client: _EncoderClient[Any],
        calls: list[tuple[grpc.Future, slice]],
        field_paths: Sequence[str],
        timeout_s: float,
        caller_limited: bool,
    ) -> None:
        self._client = client
        self._calls = calls
        self._field_paths = list(field_paths)
        self._timeout_s = timeout_s
        self._caller_limited = caller_limited

    @property
    def kind(self) -> str:
        """The encoder's kind, "image" or "text"."""
        return self._client.kind

    def result(self) -> np.ndarray:
        """Return the embeddings (N, D) float32 in input order; raise a ServiceError on failure."""
        parts: list[np.ndarray] = []
        for position, (call, rows) in enumerate(self._calls):
            try:
                reply = call.result()
            except grpc.RpcError as error:
                for later, _rows in self._calls[position + 1 :]:
                    later.cancel()
                raise self._client.map_error(
                    error, self._field_paths[rows], self._timeout_s, caller_limited=self._caller_limited
                ) from None
            parts.append(self._client.decode_reply(reply, rows.stop - rows.start))
        return np.concatenate(parts, axis=0)  # (N, D)


class _EncoderClient(Generic[_Item]):
    """Channel, chunking, deadline and error handling shared by the two encoder clients."""

    kind: str  # "image" or "text", used in messages

    def __init__(
        self,
        address: str,
        *,
        expected_model_id: str,
        expected_dim: int,
        timeout_s: float,
        max_items_per_call: int,
        max_message_bytes: int,
        tls: ClientTls | None = None,
        deadline_margin_s: float = 0.0,
    ) -> None:
        self.address = address
        self.deadline_margin_s = deadline_margin_s
        self.expected_model_id = expected_model_id
        self.expected_dim = expected_dim
        self.timeout_s = timeout_s
        self.max_items_per_call = max_items_per_call
        self.tls = tls
        self._channel = open_channel(
            address,
            [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # gRPC's reconnect backoff grows to 120 s by default, so a restarted encoder stayed
                # unused for about 90 s. Capped at 1 s, the next call after its restart reaches it.
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ],
            tls,
        )
        self._bind(self._channel)

    def close(self) -> None:
        """Close the channel; later calls fail."""
        self._channel.close()

    def submit(
        self, items: Sequence[_Item], field_paths: Sequence[str], remaining_s: float | None
    ) -> PendingEmbeddings:
        """Start embedding `items` and return the calls in flight.

        `field_paths` names each item's field in the predictor's request, for error messages.
        `remaining_s` is the time the predictor's caller has left, or None without a deadline.
        """
        caller_s = None if remaining_s is None else remaining_s - self.deadline_margin_s
        caller_limited = caller_s is not None and caller_s < self.timeout_s
        timeout_s = caller_s if caller_s is not None and caller_limited else self.timeout_s
        if timeout_s <= 0:
            raise DeadlineExceededError(
                f"the call's deadline passed before the {self.kind} encoder at {self.address} was called"
            )
        calls = []
        for start in range(0, len(items), self.max_items_per_call):
            rows = slice(start, min(start + self.max_items_per_call, len(items)))
            calls.append((self._start_call(items[rows], timeout_s), rows))
        return PendingEmbeddings(self, calls, field_paths, timeout_s, caller_limited)

    def map_error(
        self, error: grpc.RpcError, field_paths: Sequence[str], timeout_s: float, *, caller_limited: bool
    ) -> ServiceError:
        """Turn a failed encoder call into the predictor's ServiceError.

        `caller_limited` tells whether `timeout_s` came from the caller's deadline rather than from
        the encoder timeout setting.
        """
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        if code == grpc.StatusCode.INVALID_ARGUMENT and _BATCH_LIMIT_MARKER in details:
            # The predictor chose the chunk size, so this is the server's configuration, not the
            # caller's request.
            logger.error("%s encoder at %s rejected a chunk: %s", self.kind, self.address, details)
            return FailedPreconditionError(
                f"the {self.kind} encoder at {self.address} accepts fewer items per call than "
                f"PQ_PREDICTOR_ENCODER_BATCH_SIZE ({self.max_items_per_call}): {details}; set it to at most "
                "the encoder's maximum batch size"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgumentError(
                f"{self._locate(details, field_paths)} was rejected by the {self.kind} encoder: {details}"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            # A failed TLS handshake is UNAVAILABLE as well, and a plaintext client of a TLS server
            # gets only "Socket closed", so the hint names the TLS settings in every case.
            return UnavailableError(
                f"the {self.kind} encoder at {self.address} is unavailable ({details}); check that the "
                "service is running, that the predictor's address setting points to it, and that "
                "PQ_PREDICTOR_ENCODER_TLS_* match the encoder's TLS settings"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return UnavailableError(
                f"the {self.kind} encoder at {self.address} is overloaded ({details}); retry later"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and caller_limited:
            return DeadlineExceededError(
                f"the {self.kind} encoder at {self.address} did not respond within {timeout_s:.3g} s, "
                "the call's remaining time"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # The caller still has time, so the encoder is too slow right now and a retry can succeed.
            return UnavailableError(
                f"the {self.kind} encoder at {self.address} did not respond within the encoder timeout "
                f"of {timeout_s:.3g} s"
            )
        logger.error("%s encoder at %s failed with %s: %s", self.kind, self.address, code.name, details)
        return ServiceError(f"the {self.kind} encoder at {self.address} failed with {code.name}: {details}")

    def decode_reply(self, reply: Any, count: int) -> np.ndarray:
        """Check one reply's model id, dimension and length, and return its vectors (count, D)."""
        embeddings, model_id, embedding_dim = self._unpack(reply)
        if model_id != self.expected_model_id:
            raise FailedPreconditionError(
                f"the {self.kind} encoder at {self.address} runs model {model_id!r}, but the fusion "
                f"checkpoint was trained on embeddings of {self.expected_model_id!r}; point the predictor "
                "at an encoder with that model, or load a checkpoint trained on this one"
            )
        if embedding_dim != self.expected_dim:
            raise FailedPreconditionError(
                f"the {self.kind} encoder at {self.address} returns {embedding_dim}-d embeddings, but "
                f"the fusion checkpoint expects {self.expected_dim}-d"
            )
        if len(embeddings) != count:
            raise ServiceError(
                f"the {self.kind} encoder at {self.address} returned {len(embeddings)} embeddings "
                f"for {count} inputs"
            )
        try:
            vectors = [embedding_codec.from_message(embedding) for embedding in embeddings]
        except ValueError as error:
            raise ServiceError(
                f"the {self.kind} encoder at {self.address} sent a malformed embedding: {error}"
            ) from None
        if any(vector.shape != (self.expected_dim,) for vector in vectors):
            raise ServiceError(
                f"the {self.kind} encoder at {self.address} sent an embedding whose length differs "
                f"from its embedding_dim {embedding_dim}"
            )
        return np.stack(vectors).astype(np.float32, copy=False)  # (count, D)

    def _locate(self, details: str, field_paths: Sequence[str]) -> str:
        match = _ITEM_INDEX.search(details)
        if match is not None and int(match.group(1)) < len(field_paths):
            return field_paths[int(match.group(1))]
        if len(field_paths) == 1:
            return field_paths[0]
        return "one of " + ", ".join(field_paths)

    def _bind(self, channel: grpc.Channel) -> None:
        raise NotImplementedError

    def _start_call(self, items: Sequence[_Item], timeout_s: float) -> grpc.Future:
        raise NotImplementedError

    def _unpack(self, reply: Any) -> tuple[Sequence[Embedding], str, int]:
        raise NotImplementedError


class ImageEncoderClient(_EncoderClient[bytes]):
    """Client of pq.v1.ImageEncoderService; items are encoded image files."""

    kind = "image"

    def _bind(self, channel: grpc.Channel) -> None:
        self._stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)

    def _start_call(self, items: Sequence[bytes], timeout_s: float) -> grpc.Future:
        request = image_encoder_pb2.EmbedImagesRequest(images=list(items))
        return self._stub.EmbedImages.future(request, timeout=timeout_s)

    def _unpack(self, reply: image_encoder_pb2.EmbedImagesResponse) -> tuple[Sequence[Embedding], str, int]:
        return reply.embeddings, reply.model_id, reply.embedding_dim


class TextEncoderClient(_EncoderClient[str]):
    """Client of pq.v1.TextEncoderService; items are product texts."""

    kind = "text"

    def _bind(self, channel: grpc.Channel) -> None:
        self._stub = text_encoder_pb2_grpc.TextEncoderServiceStub(channel)

    def _start_call(self, items: Sequence[str], timeout_s: float) -> grpc.Future:
        request = text_encoder_pb2.EmbedTextsRequest(texts=list(items))
        return self._stub.EmbedTexts.future(request, timeout=timeout_s)

    def _unpack(self, reply: text_encoder_pb2.EmbedTextsResponse) -> tuple[Sequence[Embedding], str, int]:
        return [result.embedding for result in reply.results], reply.model_id, reply.embedding_dim
