"""Tests of `python -m services.image_encoder` as a process: start, health, stop, and start failures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.image_encoder import serve

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120


def service_environment(**settings: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PQ_IMAGE_ENCODER_")}
    environment.update({f"PQ_IMAGE_ENCODER_{key.upper()}": value for key, value in settings.items()})
    return environment


def test_main_serves_and_stops() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.image_encoder"],
        cwd=REPO_ROOT,
        env=service_environment(address="127.0.0.1:0", device="cpu"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        lines = []
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"started on port (\d+)", line)
            if found:
                port = int(found.group(1))
        assert port is not None, "no start line in the log:\n" + "".join(lines)
        started_line = lines[-1]
        assert "backbone efficientnet_lite0" in started_line
        assert re.search(r"model id efficientnet_lite0\.imagenet\.224@[0-9a-f]{8}", started_line)
        assert "device cpu" in started_line

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        remaining = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0
    assert "stopped" in remaining


def test_main_missing_weights(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18-missing.pth"

    finished = subprocess.run(
        [sys.executable, "-m", "services.image_encoder"],
        cwd=REPO_ROOT,
        env=service_environment(backbone="resnet18", weights_path=str(missing), device="cpu"),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )

    assert finished.returncode == 1
    assert "image encoder not started" in finished.stderr
    assert str(missing) in finished.stderr
    assert "PQ_IMAGE_ENCODER_WEIGHTS_PATH" in finished.stderr


def test_serve_invalid_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PQ_IMAGE_ENCODER_BACKBONE", "vgg")

    with pytest.raises(SystemExit) as raised:
        serve()

    assert raised.value.code == 2
    assert "PQ_IMAGE_ENCODER_BACKBONE='vgg'" in caplog.text
