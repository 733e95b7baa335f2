"""Bearer-token authentication: the interceptor on a real gRPC server, the token file and the settings.

The server registers a small QualityPredictorService servicer instead of the predictor, so these
tests need no model; tests/services/test_tls_predictor.py runs the real predictor with a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.common.auth import BearerTokenInterceptor, _DenialLog, check_token, read_token_file
from services.common.errors import NotFoundError
from services.common.server import ServiceServer, build_server
from services.common.settings import SettingsError
from services.fusion_predictor.settings import PredictorSettings

SERVICE_NAME = predictor_pb2.DESCRIPTOR.services_by_name["QualityPredictorService"].full_name
TOKEN = "tok_3Qx9vZcA7LmN2pR8sT4uW6yB"
SECOND_TOKEN = "second-token.with~chars+/=="
WRONG_TOKEN = "tok_000000000000000000000000"
TIMEOUT_S = 5.0


class _Servicer(predictor_grpc.QualityPredictorServiceServicer):
    """Returns a fixed quality, and NOT_FOUND for product id "missing"."""

    def PredictQuality(
        self, request: predictor_pb2.PredictQualityRequest, context: grpc.ServicerContext
    ) -> predictor_pb2.PredictQualityResponse:
        if request.product_id == "missing":
            raise NotFoundError("product 'missing' is not in the test store")
        return predictor_pb2.PredictQualityResponse(product_id=request.product_id, quality=4.5)


def _register(server: grpc.Server) -> list[str]:
    predictor_grpc.add_QualityPredictorServiceServicer_to_server(_Servicer(), server)
    return [SERVICE_NAME]


def _start_server() -> ServiceServer:
    interceptor = BearerTokenInterceptor([TOKEN, SECOND_TOKEN], [SERVICE_NAME])
    service = build_server(
        "127.0.0.1:0", _register, max_workers=2, max_message_bytes=1024 * 1024, interceptors=[interceptor]
    )
    service.start()
    return service


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceServer]:
    service = _start_server()
    yield service
    service.stop(0)


@pytest.fixture
def fresh_stub() -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    """A stub of a server of its own, whose log has not yet written a line for any reason."""
    service = _start_server()
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as opened:
        yield predictor_grpc.QualityPredictorServiceStub(opened)
    service.stop(0)


@pytest.fixture(scope="module")
def channel(server: ServiceServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> predictor_grpc.QualityPredictorServiceStub:
    return predictor_grpc.QualityPredictorServiceStub(channel)


def _predict(
    stub: predictor_grpc.QualityPredictorServiceStub, metadata: list[tuple[str, str]], product_id: str = "p1"
) -> predictor_pb2.PredictQualityResponse:
    request = predictor_pb2.PredictQualityRequest(product_id=product_id)
    return stub.PredictQuality(request, metadata=metadata, timeout=TIMEOUT_S)


def _rejected(stub: predictor_grpc.QualityPredictorServiceStub, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _predict(stub, metadata)
    return raised.value


# The interceptor on a server.


def test_right_token_served(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    response = _predict(stub, [("authorization", f"Bearer {TOKEN}")])

    assert response.quality == pytest.approx(4.5)


def test_every_listed_token_served(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    assert _predict(stub, [("authorization", f"Bearer {SECOND_TOKEN}")]).product_id == "p1"


def test_scheme_case_insensitive(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    # RFC 7235: the authentication scheme is case-insensitive.
    assert _predict(stub, [("authorization", f"bearer {TOKEN}")]).product_id == "p1"


def test_no_token_unauthenticated(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    error = _rejected(stub, [])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no authorization metadata" in error.details()


@pytest.mark.parametrize(
    "value",
    [
        f"Basic {TOKEN}",
        "Bearer",
        "Bearer ",
        f"Bearer{TOKEN}",
        f"Bearer {TOKEN} extra",
        "Bearer tok_3Qx9vZcA7LmN2pR8sT4uW6y!",
        f"Token {TOKEN}",
        TOKEN,
    ],
    ids=["basic-scheme", "scheme-only", "empty-token", "no-space", "two-words", "invalid-char", "other-scheme", "bare"],
)
def test_malformed_unauthenticated(stub: predictor_grpc.QualityPredictorServiceStub, value: str) -> None:
    error = _rejected(stub, [("authorization", value)])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization metadata is malformed" in error.details()


def test_wrong_token_unauthenticated(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    # UNAUTHENTICATED, not PERMISSION_DENIED: an unknown token identifies no caller.
    error = _rejected(stub, [("authorization", f"Bearer {WRONG_TOKEN}")])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token is not accepted" in error.details()
    assert WRONG_TOKEN not in error.details()


def test_two_authorization_entries_rejected(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    error = _rejected(stub, [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {WRONG_TOKEN}")])

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "2 authorization metadata entries" in error.details()


def test_batch_rpc_protected(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.PredictQualityBatch(predictor_pb2.PredictQualityBatchRequest(), timeout=TIMEOUT_S)

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_service_errors_after_auth(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    # An authenticated call still reaches the error interceptor, which maps NotFoundError.
    with pytest.raises(grpc.RpcError) as raised:
        _predict(stub, [("authorization", f"Bearer {TOKEN}")], product_id="missing")

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_unparsable_request_without_token(channel: grpc.Channel) -> None:
    # The token is checked before the request is parsed, so garbage without a token is UNAUTHENTICATED.
    call = channel.unary_unary(f"/{SERVICE_NAME}/PredictQuality")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff", timeout=TIMEOUT_S)

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_open_without_token(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    for service in ["", SERVICE_NAME]:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_open_without_token(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])

    responses = list(stub.ServerReflectionInfo(requests, timeout=TIMEOUT_S))

    names = [service.name for service in responses[0].list_services_response.service]
    assert SERVICE_NAME in names


def test_tokens_never_logged(
    fresh_stub: predictor_grpc.QualityPredictorServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _predict(fresh_stub, [("authorization", f"Bearer {TOKEN}")])
        for value in [f"Bearer {WRONG_TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}!"]:
            _rejected(fresh_stub, [("authorization", value)])

    assert len([record for record in caplog.records if record.name == "services.common.auth"]) == 2
    for secret in [TOKEN, WRONG_TOKEN, SECOND_TOKEN]:
        assert secret not in caplog.text


def test_denials_logged_with_count(
    fresh_stub: predictor_grpc.QualityPredictorServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            _rejected(fresh_stub, [])

    lines = [record.getMessage() for record in caplog.records if record.name == "services.common.auth"]
    assert len(lines) == 1
    assert "rejected /pq.v1.QualityPredictorService/PredictQuality" in lines[0]
    assert "no authorization metadata" in lines[0]


def test_denial_log_counts_suppressed_lines(caplog: pytest.LogCaptureFixture) -> None:
    denials = _DenialLog(interval_s=0.2)

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            denials.record("/pq.v1.QualityPredictorService/PredictQuality", "ipv4:127.0.0.1:1", "no token")
        time.sleep(0.25)
        denials.record("/pq.v1.QualityPredictorService/PredictQuality", "ipv4:127.0.0.1:1", "no token")

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "(2 more calls rejected for this reason" in lines[1]


def test_interceptor_needs_a_token() -> None:
    with pytest.raises(ValueError, match="at least one accepted token"):
        BearerTokenInterceptor([], [SERVICE_NAME])


# Token file and single token.


def test_token_file_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# predictor clients\n\n{TOKEN}\n  {SECOND_TOKEN}  \n")

    assert read_token_file(path) == [TOKEN, SECOND_TOKEN]


@pytest.mark.parametrize(
    ("text", "expected", "bad_line"),
    [
        ("", "contains no token", None),
        ("# only a comment\n", "contains no token", None),
        (f"{TOKEN}\nx1y2z\n", "line 2 of", "x1y2z"),
        (f"{TOKEN}\nhas a space in it 1234567\n", "line 2 of", "has a space in it"),
    ],
    ids=["empty", "comment-only", "short-token", "space-in-token"],
)
def test_token_file_invalid(tmp_path: Path, text: str, expected: str, bad_line: str | None) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)

    with pytest.raises(ValueError, match=expected) as raised:
        read_token_file(path)
    if bad_line is not None:
        assert bad_line not in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_token_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_token_file(tmp_path / "absent")


def test_short_token_rejected() -> None:
    with pytest.raises(ValueError, match="fewer than the minimum 16"):
        check_token("abc123")


def _settings(**environ: str) -> PredictorSettings:
    return PredictorSettings.from_env({f"PQ_PREDICTOR_{name.upper()}": value for name, value in environ.items()})


def test_settings_no_auth_by_default() -> None:
    assert _settings().accepted_tokens() == []


def test_settings_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n{SECOND_TOKEN}\n")

    assert _settings(auth_tokens_path=str(path)).accepted_tokens() == [TOKEN, SECOND_TOKEN]


def test_settings_single_token() -> None:
    settings = _settings(auth_token=TOKEN)

    assert settings.accepted_tokens() == [TOKEN]
    assert TOKEN not in repr(settings)


def test_settings_token_hidden_in_errors() -> None:
    with pytest.raises(SettingsError) as raised:
        _settings(auth_token="tooshort!")

    message = str(raised.value)
    assert "PQ_PREDICTOR_AUTH_TOKEN=<hidden>" in message
    assert "tooshort" not in message


def test_settings_invalid_token_file_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\nshort-secret\n")

    with pytest.raises(SettingsError) as raised:
        _settings(auth_tokens_path=str(path))

    message = str(raised.value)
    assert "PQ_PREDICTOR_AUTH_TOKENS_PATH=" in message
    assert "line 2 of" in message
    assert "short-secret" not in message
    assert TOKEN not in message


def test_settings_token_and_file_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")

    with pytest.raises(SettingsError, match="set only one of PQ_PREDICTOR_AUTH_TOKENS_PATH and PQ_PREDICTOR_AUTH_TOKEN"):
        _settings(auth_tokens_path=str(path), auth_token=SECOND_TOKEN)


def test_settings_empty_values_unset() -> None:
    assert _settings(auth_tokens_path="", auth_token="").accepted_tokens() == []

