"""Bearer-token authentication of gRPC calls: accepted tokens and the server interceptor that checks them.

A call to a protected service must carry exactly one metadata entry `authorization: Bearer <token>`
(RFC 6750) with an accepted token. Every failed check ends the call with UNAUTHENTICATED, before the
request is parsed or a servicer runs. The gRPC status code definitions reserve PERMISSION_DENIED for a
caller that was identified but lacks a permission. Every accepted token grants the same access, so a
token that is not accepted leaves the caller unidentified, and PERMISSION_DENIED never applies.

Calls to other services of the same server (health checking, reflection) pass without a token, so
load balancers and container probes need none. Tokens are kept as SHA-256 digests and compared in
constant time. No token, and no part of the authorization value, appears in a status message or a
log line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from services.common.errors import UnauthenticatedError

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
BEARER_SCHEME = "bearer"
# RFC 6750 b64token: the characters a bearer token may contain.
_TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# A shorter token can be guessed. 16 characters of `secrets.token_urlsafe` carry 96 bits.
MIN_TOKEN_CHARS = 16
TOKEN_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'

# Rejected calls are logged once per reason and then at most once per interval with a count, so a
# client that retries without a token cannot flood the log.
DENIAL_LOG_INTERVAL_S = 60.0


def check_token(token: str) -> None:
    """Raise ValueError when `token` is not a usable bearer token; the message never contains it."""
    if not _TOKEN_SYNTAX.fullmatch(token):
        raise ValueError(
            "a token may contain only letters, digits and - . _ ~ + / followed by optional = signs; " + TOKEN_HINT
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token has {len(token)} characters, fewer than the minimum {MIN_TOKEN_CHARS}; {TOKEN_HINT}")


def read_token_file(path: Path) -> list[str]:
    """Return the tokens of `path`: one per line, blank lines and lines starting with # skipped.

    Raises ValueError naming the file and line when the file cannot be read, contains no token, or a
    line is not a valid token.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; set it to a file with one bearer token per line") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read: {error}") from None

    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        try:
            check_token(token)
        except ValueError as error:
            raise ValueError(f"line {number} of {path} is not a valid token: {error}") from None
        tokens.append(token)
    if not tokens:
        raise ValueError(f"{path} contains no token; write one bearer token per line")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class _DenialLog:
    """Warning lines about rejected calls: the first of each reason, then one per interval with a count."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        # reason -> (time of the last line, calls rejected since then without a line)
        self._state: dict[str, tuple[float, int]] = {}

    def record(self, method: str, peer: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last_s, suppressed = self._state.get(reason, (float("-inf"), 0))
            if now - last_s < self._interval_s:
                self._state[reason] = (last_s, suppressed + 1)
                return
            self._state[reason] = (now, 0)
        if suppressed:
            logger.warning(
                "rejected %s from %s with UNAUTHENTICATED: %s (%d more calls rejected for this reason in the last %.0f s)",
                method, peer, reason, suppressed, now - last_s,
            )
        else:
            logger.warning("rejected %s from %s with UNAUTHENTICATED: %s", method, peer, reason)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Reject calls to `protected_services` that lack `authorization: Bearer <token>` with an accepted token.

    `protected_services` are full service names such as pq.v1.QualityPredictorService. Calls to any
    other service pass unchecked.
    """

    def __init__(self, tokens: Iterable[str], protected_services: Iterable[str]) -> None:
        self._digests = [_digest(token) for token in tokens]
        if not self._digests:
            raise ValueError("BearerTokenInterceptor needs at least one accepted token")
        self._protected = frozenset(protected_services)
        self._denials = _DenialLog(DENIAL_LOG_INTERVAL_S)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        # A method name is "/<package>.<Service>/<Method>".
        service = method.lstrip("/").rpartition("/")[0]
        if handler is None or service not in self._protected:
            return handler

        failure = self._check(handler_call_details.invocation_metadata)
        if failure is None:
            return handler
        return _rejecting_handler(handler, method, failure, self._denials)

    def _check(self, metadata: Iterable[tuple[str, Any]] | None) -> UnauthenticatedError | None:
        """Return the error that rejects a call with this metadata, or None when it may proceed."""
        values = [value for key, value in (metadata or ()) if key == AUTHORIZATION_KEY]
        if not values:
            return UnauthenticatedError(
                "the call has no authorization metadata; send the metadata 'authorization: Bearer <token>'"
            )
        if len(values) > 1:
            return UnauthenticatedError(
                f"the call has {len(values)} authorization metadata entries; send exactly one"
            )

        value = values[0] if isinstance(values[0], str) else ""
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER_SCHEME or not _TOKEN_SYNTAX.fullmatch(token):
            return UnauthenticatedError(
                "the authorization metadata is malformed; its value must be 'Bearer <token>'"
            )

        presented = _digest(token)
        accepted = False
        # Compare with every accepted token, so the time taken does not tell which one matched.
        for digest in self._digests:
            accepted |= hmac.compare_digest(presented, digest)
        if not accepted:
            return UnauthenticatedError("the bearer token is not accepted; send a token the server was configured with")
        return None


def _rejecting_handler(
    handler: grpc.RpcMethodHandler, method: str, error: UnauthenticatedError, denials: _DenialLog
) -> grpc.RpcMethodHandler:
    """Return a handler of the same call type that ends the call with `error` without parsing the request."""

    def reject(_request: Any, context: grpc.ServicerContext) -> NoReturn:
        denials.record(method, context.peer(), error.message)
        context.abort(error.code, error.message)
        # context.abort always raises, so this line is never reached. It exists for type checkers.
        raise AssertionError("unreachable")

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(reject)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(reject)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(reject)
    return grpc.stream_stream_rpc_method_handler(reject)
