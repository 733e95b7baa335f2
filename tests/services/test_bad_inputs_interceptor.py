"""Tests of the error interceptor's limits, on a real gRPC server built by services.common.server.

The server offers one method whose behaviour each test sets, so a test can raise any error without
depending on a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.interceptor import MAX_DETAILS_BYTES, limit_details
from services.common.server import build_server

METHOD = "/test.v1.ProbeService/Probe"
TIMEOUT_S = 10.0

Behaviour = Callable[[health_pb2.HealthCheckRequest], health_pb2.HealthCheckResponse]


class Probe:
    """The behaviour of the probe method, replaceable per test."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda request: health_pb2.HealthCheckResponse()

    def handle(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        return self.behaviour(request)


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe()


@pytest.fixture(scope="module")
def channel(probe: Probe) -> Iterator[grpc.Channel]:
    def register(server: grpc.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(
            probe.handle,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("test.v1.ProbeService", {"Probe": handler})]
        )
        return []

    service = build_server("127.0.0.1:0", register, max_workers=2, max_message_bytes=4 * 1024 * 1024)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as opened:
        yield opened
    service.stop(grace_s=0)


def call(channel: grpc.Channel, payload: bytes) -> bytes:
    send = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    return send(payload, timeout=TIMEOUT_S)


def rpc_error(channel: grpc.Channel, payload: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(channel, payload)
    return raised.value


def fail_with(error: Exception) -> Behaviour:
    def behaviour(request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        raise error

    return behaviour


@pytest.mark.parametrize("character", ["x", "é", "\u0001"], ids=["ascii", "two-byte", "control"])
def test_long_message_cut(channel: grpc.Channel, probe: Probe, character: str) -> None:
    # grpc percent-encodes non-ASCII and control bytes in the trailer, so "é" takes 6 bytes there.
    probe.behaviour = fail_with(NotFoundError(character * 1_000_000))

    error = rpc_error(channel, b"")

    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = error.details()
    assert len(details.encode("utf-8")) <= MAX_DETAILS_BYTES
    assert details.startswith(character * 100)
    full_bytes = len((character * 1_000_000).encode("utf-8"))
    assert details.endswith(f" ... (message cut from {full_bytes:,} bytes)")


def test_short_message_kept(channel: grpc.Channel, probe: Probe) -> None:
    message = "request.product_id 'x' has no features; check the id"
    probe.behaviour = fail_with(NotFoundError(message))

    error = rpc_error(channel, b"")

    assert error.details() == message


def test_cut_keeps_whole_characters() -> None:
    message = "é" * 3000  # 6000 UTF-8 bytes

    cut = limit_details(message, max_bytes=101)

    assert len(cut.encode("utf-8")) <= 101
    assert cut.endswith(" ... (message cut from 6,000 bytes)")
    assert set(cut.removesuffix(" ... (message cut from 6,000 bytes)")) == {"é"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x0a\x02\xc3(", "String field had bad UTF-8"),  # field service: an invalid 2-byte sequence
        (b"\xff\xff\xff", "Wire format was corrupt"),
    ],
    ids=["not-utf8", "corrupt"],
)
def test_unparsable_request_invalid_argument(
    channel: grpc.Channel, probe: Probe, payload: bytes, reason: str
) -> None:
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    probe.behaviour = lambda request: serving

    error = rpc_error(channel, payload)
    reply = health_pb2.HealthCheckResponse.FromString(call(channel, b""))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "the request cannot be parsed: Error parsing message with type 'grpc.health.v1.HealthCheckRequest'"
    )
    assert reason in error.details()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_invalid_argument_still_mapped(channel: grpc.Channel, probe: Probe) -> None:
    probe.behaviour = fail_with(InvalidArgumentError("request.title is empty"))

    error = rpc_error(channel, b"")

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request.title is empty"
