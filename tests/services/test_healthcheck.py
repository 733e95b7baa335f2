"""Tests of the gRPC health probe against a real server built by services.common.server."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.healthcheck import EXIT_SERVING, EXIT_UNHEALTHY, main
from services.common.server import ServiceServer, build_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "pq.v1.HealthcheckTestService"


def _register(_server: grpc.Server) -> list[str]:
    # No servicer of its own: the probe only needs the health service that build_server adds.
    return [SERVICE_NAME]


@pytest.fixture
def server() -> Iterator[ServiceServer]:
    service = build_server("127.0.0.1:0", _register, max_workers=2, max_message_bytes=1024 * 1024)
    service.start()
    yield service
    service.stop(0)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 without listening, so connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_serving_server_exits_zero(server: ServiceServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", f"127.0.0.1:{server.port}"]) == EXIT_SERVING
    assert capsys.readouterr().err == ""


def test_serving_service_exits_zero(server: ServiceServer) -> None:
    assert main(["--address", f"127.0.0.1:{server.port}", "--service", SERVICE_NAME]) == EXIT_SERVING


def test_unknown_service_exits_one(server: ServiceServer, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--address", f"127.0.0.1:{server.port}", "--service", "pq.v1.NoSuchService"])

    assert status == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert "no health status for service 'pq.v1.NoSuchService'" in err
    assert err.count("\n") == 1


def test_graceful_shutdown_exits_one(server: ServiceServer, capsys: pytest.CaptureFixture[str]) -> None:
    # ServiceServer.stop switches health to NOT_SERVING before it closes the socket. A compose
    # healthcheck that runs between the two steps gets this state.
    server.health.enter_graceful_shutdown()

    for service in ["", SERVICE_NAME]:
        status = main(["--address", f"127.0.0.1:{server.port}", "--service", service])
        assert status == EXIT_UNHEALTHY
        assert "is NOT_SERVING" in capsys.readouterr().err


def test_stopped_server_exits_one(server: ServiceServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.stop(0)

    assert main(["--address", f"127.0.0.1:{server.port}", "--timeout", "2"]) == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: ")
    assert err.count("\n") == 1


def test_nothing_listening_exits_one(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--address", f"127.0.0.1:{closed_port}", "--timeout", "2"])

    assert status == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert f"127.0.0.1:{closed_port} is unavailable" in err
    assert err.count("\n") == 1


def test_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    # A socket that accepts TCP connections but never speaks HTTP/2, like a hung process.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        status = main(["--address", f"127.0.0.1:{port}", "--timeout", "0.5"])

    assert status == EXIT_UNHEALTHY
    assert "timed out after 0.5 s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["--address", "127.0.0.1"],
        ["--address", "127.0.0.1:0"],
        ["--address", "127.0.0.1:70000"],
        ["--address", ":50051"],
        ["--address", "127.0.0.1:50051", "--timeout", "0"],
        ["--address", "127.0.0.1:50051", "--timeout", "soon"],
    ],
)
def test_invalid_arguments_exit_one(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(arguments)

    assert raised.value.code == EXIT_UNHEALTHY
    assert "python -m services.common.healthcheck: " in capsys.readouterr().err


def test_module_runs_without_torch(server: ServiceServer) -> None:
    # Run as a container healthcheck does, and prove the probe never imports torch.
    code = (
        "import runpy, sys\n"
        "sys.argv = ['healthcheck', '--address', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('services.common.healthcheck', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    status = stop.code\n"
        "assert 'torch' not in sys.modules, 'the health probe imported torch'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, f"127.0.0.1:{server.port}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == EXIT_SERVING, result.stderr
