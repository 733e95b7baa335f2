"""TLS and mutual TLS of the servers that services.common.server builds, and their settings and probe.

Each case runs a real gRPC server on a free port of 127.0.0.1 with certificates signed in a
temporary folder, and calls it over a real channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.healthcheck import EXIT_SERVING, EXIT_UNHEALTHY, main
from services.common.server import ServiceServer, build_server
from services.common.settings import ServiceSettings, SettingsError
from services.common.tls import ServerTls
from tests.tls_certificates import make_test_certificates

SERVICE_NAME = "pq.v1.TlsTestService"
TIMEOUT_S = 5.0


class _Settings(ServiceSettings):
    env_prefix: ClassVar[str] = "PQ_TLS_TEST_"


def _register(_server: grpc.Server) -> list[str]:
    # The health service that build_server adds is all these tests call.
    return [SERVICE_NAME]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_test_certificates(tmp_path_factory.mktemp("tls_server_certs"))


def _serve(tls: ServerTls | None) -> ServiceServer:
    service = build_server("127.0.0.1:0", _register, max_workers=2, max_message_bytes=1024 * 1024, tls=tls)
    service.start()
    return service


@pytest.fixture
def tls_server(certs: Any) -> Iterator[ServiceServer]:
    service = _serve(ServerTls(certs.server_cert, certs.server_key))
    yield service
    service.stop(0)


@pytest.fixture
def mtls_server(certs: Any) -> Iterator[ServiceServer]:
    service = _serve(ServerTls(certs.server_cert, certs.server_key, client_ca_path=certs.ca))
    yield service
    service.stop(0)


def _check(channel: grpc.Channel) -> int:
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S).status


def _secure(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def _rpc_error(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _check(channel)
    return raised.value


# Server side: TLS only.


def test_tls_serves_tls_client(tls_server: ServiceServer, certs: Any) -> None:
    assert _check(_secure(tls_server.port, certs.ca)) == health_pb2.HealthCheckResponse.SERVING


def test_tls_rejects_plaintext_client(tls_server: ServiceServer) -> None:
    error = _rpc_error(grpc.insecure_channel(f"127.0.0.1:{tls_server.port}"))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_rejects_unknown_ca(tls_server: ServiceServer, certs: Any) -> None:
    # The client verifies the server: a certificate that its CA bundle did not sign is rejected.
    error = _rpc_error(_secure(tls_server.port, certs.other_ca))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in error.details()


def test_tls_does_not_require_client_cert(tls_server: ServiceServer, certs: Any) -> None:
    channel = _secure(tls_server.port, certs.ca, certs.other_client_cert, certs.other_client_key)

    assert _check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_server_rejects_tls_client(certs: Any) -> None:
    service = _serve(None)
    try:
        error = _rpc_error(_secure(service.port, certs.ca))
    finally:
        service.stop(0)

    assert error.code() == grpc.StatusCode.UNAVAILABLE


# Server side: mutual TLS.


def test_mtls_serves_client_with_cert(mtls_server: ServiceServer, certs: Any) -> None:
    channel = _secure(mtls_server.port, certs.ca, certs.client_cert, certs.client_key)

    assert _check(channel) == health_pb2.HealthCheckResponse.SERVING


def test_mtls_rejects_client_without_cert(mtls_server: ServiceServer, certs: Any) -> None:
    error = _rpc_error(_secure(mtls_server.port, certs.ca))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_rejects_cert_of_other_ca(mtls_server: ServiceServer, certs: Any) -> None:
    error = _rpc_error(_secure(mtls_server.port, certs.ca, certs.other_client_cert, certs.other_client_key))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_rejects_plaintext_client(mtls_server: ServiceServer) -> None:
    error = _rpc_error(grpc.insecure_channel(f"127.0.0.1:{mtls_server.port}"))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


# Start-up log.


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("plaintext", "serves plaintext without TLS"), ("tls", "serves TLS with certificate"), ("mtls", "serves mutual TLS")],
)
def test_start_log_names_mode(certs: Any, caplog: pytest.LogCaptureFixture, mode: str, expected: str) -> None:
    tls = {
        "plaintext": None,
        "tls": ServerTls(certs.server_cert, certs.server_key),
        "mtls": ServerTls(certs.server_cert, certs.server_key, client_ca_path=certs.ca),
    }[mode]
    with caplog.at_level(logging.DEBUG):
        _serve(tls).stop(0)

    assert expected in caplog.text
    key_lines = certs.server_key.read_text().splitlines()[1:-1]
    for line in key_lines:
        assert line not in caplog.text


# Settings.


def _tls_env(cert: Path | str, key: Path | str, client_ca: Path | str | None = None) -> dict[str, str]:
    environ = {"PQ_TLS_TEST_TLS_CERT_PATH": str(cert), "PQ_TLS_TEST_TLS_KEY_PATH": str(key)}
    if client_ca is not None:
        environ["PQ_TLS_TEST_TLS_CLIENT_CA_PATH"] = str(client_ca)
    return environ


def test_settings_tls_off_by_default() -> None:
    assert _Settings.from_env({}).server_tls() is None


def test_settings_empty_paths_unset() -> None:
    # Compose passes an unset variable through as an empty string.
    settings = _Settings.from_env(_tls_env("", "", ""))

    assert settings.server_tls() is None


def test_settings_tls_and_mtls(certs: Any) -> None:
    tls = _Settings.from_env(_tls_env(certs.server_cert, certs.server_key)).server_tls()
    mtls = _Settings.from_env(_tls_env(certs.server_cert, certs.server_key, certs.ca)).server_tls()

    assert tls == ServerTls(certs.server_cert, certs.server_key)
    assert tls is not None and not tls.mutual
    assert mtls is not None and mtls.mutual


def test_settings_missing_file(certs: Any, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        _Settings.from_env(_tls_env(tmp_path / "absent.pem", certs.server_key))

    assert "PQ_TLS_TEST_TLS_CERT_PATH=" in str(raised.value)
    assert "absent.pem does not exist" in str(raised.value)


def test_settings_unreadable_file(certs: Any, tmp_path: Path) -> None:
    # A folder is unreadable as a file even for root, which can read any file.
    with pytest.raises(SettingsError) as raised:
        _Settings.from_env(_tls_env(tmp_path, certs.server_key))

    assert "PQ_TLS_TEST_TLS_CERT_PATH=" in str(raised.value)
    assert "is not a file" in str(raised.value)


def test_settings_not_pem(certs: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a certificate")

    with pytest.raises(SettingsError) as raised:
        _Settings.from_env(_tls_env(certs.server_cert, garbage))

    assert "PQ_TLS_TEST_TLS_KEY_PATH=" in str(raised.value)
    assert "is not a PEM private key file" in str(raised.value)


def test_settings_key_not_matching_cert(certs: Any) -> None:
    with pytest.raises(SettingsError) as raised:
        _Settings.from_env(_tls_env(certs.server_cert, certs.client_key))

    message = str(raised.value)
    assert "PQ_TLS_TEST_TLS_CERT_PATH and PQ_TLS_TEST_TLS_KEY_PATH" in message
    assert "does not belong to the certificate" in message
    for line in certs.client_key.read_text().splitlines()[1:-1]:
        assert line not in message


def test_settings_cert_without_key(certs: Any) -> None:
    with pytest.raises(SettingsError, match="PQ_TLS_TEST_TLS_CERT_PATH and PQ_TLS_TEST_TLS_KEY_PATH must be set together"):
        _Settings.from_env({"PQ_TLS_TEST_TLS_CERT_PATH": str(certs.server_cert)})


def test_settings_client_ca_without_cert(certs: Any) -> None:
    with pytest.raises(SettingsError, match="PQ_TLS_TEST_TLS_CLIENT_CA_PATH needs PQ_TLS_TEST_TLS_CERT_PATH"):
        _Settings.from_env({"PQ_TLS_TEST_TLS_CLIENT_CA_PATH": str(certs.ca)})


def test_settings_client_ca_not_a_certificate(certs: Any) -> None:
    with pytest.raises(SettingsError) as raised:
        _Settings.from_env(_tls_env(certs.server_cert, certs.server_key, certs.client_key))

    assert "PQ_TLS_TEST_TLS_CLIENT_CA_PATH=" in str(raised.value)
    assert "is not a PEM certificate file" in str(raised.value)


def test_settings_encrypted_key_rejected(certs: Any, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")

    with pytest.raises(SettingsError, match="encrypted private key, which gRPC cannot use"):
        _Settings.from_env(_tls_env(certs.server_cert, encrypted))


# Health probe.


def test_probe_tls_server(tls_server: ServiceServer, certs: Any) -> None:
    arguments = ["--address", f"127.0.0.1:{tls_server.port}", "--tls-ca", str(certs.ca)]

    assert main(arguments) == EXIT_SERVING


def test_probe_mtls_server(mtls_server: ServiceServer, certs: Any) -> None:
    arguments = [
        "--address", f"127.0.0.1:{mtls_server.port}", "--service", SERVICE_NAME,
        "--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key),
    ]

    assert main(arguments) == EXIT_SERVING


def test_probe_reads_tls_environment(
    mtls_server: ServiceServer, certs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compose turns TLS on for the probe through the environment alone.
    monkeypatch.setenv("PQ_HEALTHCHECK_TLS_CA_PATH", str(certs.ca))
    monkeypatch.setenv("PQ_HEALTHCHECK_TLS_CERT_PATH", str(certs.client_cert))
    monkeypatch.setenv("PQ_HEALTHCHECK_TLS_KEY_PATH", str(certs.client_key))
    monkeypatch.setenv("PQ_HEALTHCHECK_TLS_SERVER_NAME", "localhost")

    assert main(["--address", f"127.0.0.1:{mtls_server.port}"]) == EXIT_SERVING


def test_probe_plaintext_of_tls_server_fails(
    tls_server: ServiceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--address", f"127.0.0.1:{tls_server.port}", "--timeout", "2"])

    assert status == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert "check the --tls-* options" in err
    assert err.count("\n") == 1


def test_probe_mtls_without_cert_fails(mtls_server: ServiceServer, certs: Any) -> None:
    status = main(["--address", f"127.0.0.1:{mtls_server.port}", "--timeout", "2", "--tls-ca", str(certs.ca)])

    assert status == EXIT_UNHEALTHY


def test_probe_server_name_override(tmp_path: Path) -> None:
    # A certificate issued to another name passes only when the probe checks that name.
    other = make_test_certificates(tmp_path, ("encoder.internal",))
    service = _serve(ServerTls(other.server_cert, other.server_key))
    address = f"127.0.0.1:{service.port}"
    try:
        without_override = main(["--address", address, "--timeout", "2", "--tls-ca", str(other.ca)])
        with_override = main(
            ["--address", address, "--tls-ca", str(other.ca), "--tls-server-name", "encoder.internal"]
        )
    finally:
        service.stop(0)

    assert without_override == EXIT_UNHEALTHY
    assert with_override == EXIT_SERVING


@pytest.mark.parametrize(
    "tls_arguments",
    [
        ["--tls-cert", "client.pem", "--tls-key", "client.key"],
        ["--tls-ca", "ca.pem", "--tls-cert", "client.pem"],
        ["--tls-ca", "absent.pem"],
        ["--tls-ca", "ca.pem", "--tls-cert", "client.pem", "--tls-key", "server.key"],
    ],
    ids=["cert-without-ca", "cert-without-key", "missing-ca", "key-of-other-cert"],
)
def test_probe_invalid_tls_arguments(
    certs: Any, tls_arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = certs.ca.parent
    arguments = [str(folder / value) if value.endswith((".pem", ".key")) else value for value in tls_arguments]

    with pytest.raises(SystemExit) as raised:
        main(["--address", "127.0.0.1:50051", *arguments])

    assert raised.value.code == EXIT_UNHEALTHY
    assert "python -m services.common.healthcheck: " in capsys.readouterr().err
