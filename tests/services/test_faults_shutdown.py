"""Fault injection: SIGTERM to a predictor process while calls are in flight.

The predictor runs as `python -m services.fusion_predictor`. Its image encoder is a fake that takes
SLOW_S per call, so the calls are still running when the signal arrives. A health Watch stream opened
before the signal records the status changes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor import SERVICE_NAME
from tests.services.fault_support import save_small_checkpoint, start_fake_encoders

REPO_ROOT = Path(__file__).resolve().parents[2]
Request = predictor_pb2.PredictQualityRequest
Content = predictor_pb2.ProductContent
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

IN_FLIGHT = 6
SLOW_S = 3.0
GRACE_S = 30.0
TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inline_request(index: int) -> Request:
    return Request(content=Content(image=f"image-{index}".encode(), title=f"Product {index}"))


class HealthWatch:
    """Records the statuses of a health Watch stream with their time.monotonic() times."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.events: list[tuple[float, int]] = []
        self.not_serving = threading.Event()
        self._stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._stream:
                self.events.append((time.monotonic(), reply.status))
                if reply.status == NOT_SERVING:
                    self.not_serving.set()
                    # An open stream would hold the server for its whole grace period.
                    self._stream.cancel()
        except grpc.RpcError:
            pass  # the cancel above ends the stream with CANCELLED

    def statuses(self) -> list[int]:
        return [status for _time, status in self.events]


def test_sigterm_under_load(tmp_path: Path) -> None:
    encoders = start_fake_encoders()
    encoders.image.delay_s = SLOW_S
    address = f"127.0.0.1:{free_port()}"
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PQ_")},
        "PQ_PREDICTOR_ADDRESS": address,
        "PQ_PREDICTOR_MODEL_PATH": str(save_small_checkpoint(tmp_path / "checkpoint")),
        "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": encoders.image_address,
        "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": encoders.text_address,
        "PQ_PREDICTOR_DEVICE": "cpu",
        "PQ_PREDICTOR_WRITE_BACK": "false",
        "PQ_PREDICTOR_MAX_WORKERS": "16",
        "PQ_PREDICTOR_GRACE_PERIOD_S": str(GRACE_S),
        # The requests carry no product id, so the store is never read.
        "PQ_ONLINE_STORE": "redis",
        "PQ_REDIS_CONNECTION_STRING": f"127.0.0.1:{free_port()}",
    }
    log_path = tmp_path / "predictor.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.fusion_predictor"],
            cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    pool = ThreadPoolExecutor(max_workers=IN_FLIGHT)
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            watch = HealthWatch(channel)

            calls: list[Future[predictor_pb2.PredictQualityResponse]] = [
                pool.submit(stub.PredictQuality, inline_request(i), timeout=TIMEOUT_S) for i in range(IN_FLIGHT)
            ]
            accepted_by = time.monotonic() + TIMEOUT_S
            while encoders.image.calls < IN_FLIGHT and time.monotonic() < accepted_by:
                time.sleep(0.05)
            accepted = encoders.image.calls
            running_at_signal = sum(not call.done() for call in calls)
            process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()

            saw_not_serving = watch.not_serving.wait(timeout=TIMEOUT_S)
            # Give the server time to stop accepting calls after it turned NOT_SERVING.
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:
                stub.PredictQuality(inline_request(IN_FLIGHT), timeout=TIMEOUT_S)
            refused_at = time.monotonic()

            results = [call.result(timeout=TIMEOUT_S) for call in calls]
        status = process.wait(timeout=GRACE_S + 30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if process.poll() is None:
            process.kill()
            process.wait()
        encoders.stop()
    log_text = log_path.read_text()

    assert accepted == IN_FLIGHT
    assert saw_not_serving, log_text
    assert watch.statuses() == [SERVING, NOT_SERVING]
    not_serving_at = watch.events[1][0]
    assert signalled_at < not_serving_at < refused_at
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Every call that was running when the signal arrived completes with OK.
    assert running_at_signal == IN_FLIGHT
    assert len(results) == IN_FLIGHT
    assert all(response.quality == pytest.approx(results[0].quality) for response in results)
    assert status == 0, log_text
    assert "received SIGTERM" in log_text
    assert "stopped" in log_text
