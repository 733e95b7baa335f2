"""Service errors, each bound to the gRPC status code it is reported with.

    ServiceError
     +-- InvalidArgumentError     INVALID_ARGUMENT    the request is malformed or a value is invalid
     +-- NotFoundError            NOT_FOUND           a requested entity does not exist
     +-- ResourceExhaustedError   RESOURCE_EXHAUSTED  a size or rate limit was exceeded
     +-- FailedPreconditionError  FAILED_PRECONDITION the server is not in a state to serve the call
     +-- UnavailableError         UNAVAILABLE         a dependency (Redis, an encoder) cannot be reached
     +-- DeadlineExceededError    DEADLINE_EXCEEDED   the call's deadline passed before it finished
     +-- UnauthenticatedError     UNAUTHENTICATED     the call has no valid bearer token
     +-- CallCancelledError       CANCELLED           the client cancelled the call or it ended otherwise

Servicers raise these; `services.common.interceptor.ErrorInterceptor` turns them into statuses in one
place, so no servicer calls `context.abort` itself. UnauthenticatedError is the exception: the
interceptor of `services.common.auth` ends a call with it before any servicer runs. Messages quote
values from the request through `quote_for_message`, so a huge value cannot make the status too
large to deliver.
"""

from __future__ import annotations

import grpc

# Characters of a request value that an error message quotes before it cuts the value off.
MAX_QUOTED_CHARS = 80


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


class CallCancelledError(ServiceError):
    """The call ended, for example because the client cancelled it, before its work ran.

    The client no longer waits for a reply, so the status mainly names the outcome in the server log.
    """

    code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(ServiceError):
    """The call carries no bearer token, a malformed one, or one that is not accepted."""

    code = grpc.StatusCode.UNAUTHENTICATED


def quote_for_message(value: str, max_chars: int = MAX_QUOTED_CHARS) -> str:
    """Return repr(value) for an error message, cut after `max_chars` characters with the full length.

    Request values such as product ids have no length limit, and an error message that repeats a
    1 MB value is larger than the status trailer a gRPC client accepts.
    """
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}... ({len(value):,} characters)"
