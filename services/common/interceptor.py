"""Server interceptor that maps service errors to gRPC statuses and logs every failed call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.common.errors import InvalidArgumentError, ServiceError

logger = logging.getLogger(__name__)

# gRPC sends the status message in the grpc-message trailer and percent-encodes every byte outside
# printable ASCII there. Clients drop a call whose trailers exceed their metadata limit. A grpcio
# 1.85 client rejects more than 16 KiB and reports RESOURCE_EXHAUSTED instead of the call's status,
# and gRPC's protocol guide suggests 8 KiB as a client default. 2,000 UTF-8 bytes stay under 8 KiB
# even when every byte is escaped.
MAX_DETAILS_BYTES = 2000


@dataclass(frozen=True)
class _UndecodableRequest:
    """Placeholder for a request whose bytes failed to parse, so the call fails with INVALID_ARGUMENT.

    Without it grpc reports a parse failure as INTERNAL "Exception deserializing request!".
    """

    error: DecodeError


def limit_details(message: str, max_bytes: int = MAX_DETAILS_BYTES) -> str:
    """Cut `message` to at most `max_bytes` UTF-8 bytes, ending it with a note that gives the full size."""
    encoded = message.encode("utf-8")
    if len(encoded) <= max_bytes:
        return message
    note = f" ... (message cut from {len(encoded):,} bytes)"
    head = encoded[: max_bytes - len(note.encode("utf-8"))].decode("utf-8", errors="ignore")
    return head + note


def _mark_undecodable(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _UndecodableRequest(error)

    return deserialize_or_mark


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turn a raised `ServiceError` into its status code, and any other exception into INTERNAL.

    A request that fails to parse (malformed protobuf, a string field that is not UTF-8) fails with
    INVALID_ARGUMENT. Status messages are cut to MAX_DETAILS_BYTES. Only unary-unary methods are
    wrapped because every rpc of the pq.v1 API is unary; health and reflection handlers pass through
    untouched.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behavior = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if isinstance(request, _UndecodableRequest):
                    raise InvalidArgumentError(
                        f"the request cannot be parsed: {request.error}; send a serialized protobuf "
                        "message of the method's request type, with every string field valid UTF-8"
                    )
                return behavior(request, context)
            except ServiceError as error:
                message = limit_details(error.message)
                logger.warning("%s failed with %s: %s", method, error.code.name, message)
                context.abort(error.code, message)
            except Exception:
                # context.abort raises an exception of grpc's own to end the call; let it through.
                if context.code() is not None and context.code() != grpc.StatusCode.OK:
                    raise
                logger.exception("%s failed with an unexpected error", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")

        deserializer = handler.request_deserializer
        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_mark_undecodable(deserializer) if deserializer is not None else None,
            response_serializer=handler.response_serializer,
        )
