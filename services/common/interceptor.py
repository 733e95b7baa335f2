"""Server interceptor that maps service errors to gRPC statuses and logs every failed call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from services.common.errors import ServiceError

logger = logging.getLogger(__name__)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turn a raised `ServiceError` into its status code, and any other exception into INTERNAL.

    Only unary-unary methods are wrapped because every rpc of the pq.v1 API is unary; health and
    reflection handlers pass through untouched.
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
                return behavior(request, context)
            except ServiceError as error:
                logger.warning("%s failed with %s: %s", method, error.code.name, error.message)
                context.abort(error.code, error.message)
            except Exception:
                # context.abort raises an exception of grpc's own to end the call; let it through.
                if context.code() is not None and context.code() != grpc.StatusCode.OK:
                    raise
                logger.exception("%s failed with an unexpected error", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
