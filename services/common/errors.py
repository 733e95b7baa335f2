"""Service errors, each bound to the gRPC status code it is reported with.

    ServiceError
     +-- InvalidArgumentError     INVALID_ARGUMENT    the request is malformed or a value is invalid
     +-- NotFoundError            NOT_FOUND           a requested entity does not exist
     +-- ResourceExhaustedError   RESOURCE_EXHAUSTED  a size or rate limit was exceeded
     +-- FailedPreconditionError  FAILED_PRECONDITION the server is not in a state to serve the call
     +-- UnavailableError         UNAVAILABLE         a dependency (Redis, an encoder) cannot be reached
     +-- DeadlineExceededError    DEADLINE_EXCEEDED   the call's deadline passed before it finished

Servicers raise these; `services.common.interceptor.ErrorInterceptor` turns them into statuses in one
place, so no servicer calls `context.abort` itself.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class of errors that are returned to the client with a specific gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ServiceError):
    """The request or one of its fields is invalid."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ServiceError):
    """A requested entity, such as a product id, does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhaustedError(ServiceError):
    """The request exceeds a configured size or count limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(ServiceError):
    """The server cannot serve the call in its current state, for example without a model."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(ServiceError):
    """A dependency of the service, such as Redis or an encoder service, cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ServiceError):
    """The call's deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
