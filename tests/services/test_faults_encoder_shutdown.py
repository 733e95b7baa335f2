"""Fault injection: SIGTERM to a text encoder process while calls wait in its dynamic-batching queue.

The encoder runs as `python -m services.text_encoder` with the real MiniLM model and a queue delay
of QUEUE_DELAY_S, so the calls are still queued when the signal arrives.
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

from pq.v1 import text_encoder_pb2, text_encoder_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

QUEUED_CALLS = 8
QUEUE_DELAY_S = 1.5
GRACE_S = 30.0
TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_not_serving(channel: grpc.Channel, seen: list[int], done: threading.Event) -> None:
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
    )
    try:
        for reply in stream:
            seen.append(reply.status)
            if reply.status == NOT_SERVING:
                done.set()
                # An open stream would hold the server for its whole grace period.
                stream.cancel()
    except grpc.RpcError:
        pass  # the cancel above ends the stream with CANCELLED


def test_sigterm_with_queued_calls(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PQ_")},
        "PQ_TEXT_ENCODER_ADDRESS": address,
        "PQ_TEXT_ENCODER_DEVICE": "cpu",
        "PQ_TEXT_ENCODER_MAX_QUEUE_DELAY_US": str(int(QUEUE_DELAY_S * 1_000_000)),
        "PQ_TEXT_ENCODER_GRACE_PERIOD_S": str(GRACE_S),
    }
    log_path = tmp_path / "text_encoder.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.text_encoder"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pool = ThreadPoolExecutor(max_workers=QUEUED_CALLS)
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
            stub = text_encoder_pb2_grpc.TextEncoderServiceStub(channel)
            seen: list[int] = []
            not_serving = threading.Event()
            watcher = threading.Thread(
                target=_wait_for_not_serving, args=(channel, seen, not_serving), daemon=True
            )
            watcher.start()

            calls: list[Future[text_encoder_pb2.EmbedTextsResponse]] = [
                pool.submit(
                    stub.EmbedTexts,
                    text_encoder_pb2.EmbedTextsRequest(texts=[f"product {i}"]),
                    timeout=TIMEOUT_S,
                )
                for i in range(QUEUED_CALLS)
            ]
            # Less than the queue delay, so the calls are queued and none has run yet.
            time.sleep(QUEUE_DELAY_S / 3)
            running_at_signal = sum(not call.done() for call in calls)
            process.send_signal(signal.SIGTERM)

            saw_not_serving = not_serving.wait(timeout=TIMEOUT_S)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:
                stub.EmbedTexts(text_encoder_pb2.EmbedTextsRequest(texts=["late product"]), timeout=TIMEOUT_S)
            results = [call.result(timeout=TIMEOUT_S) for call in calls]
        status = process.wait(timeout=GRACE_S + 30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()

    assert running_at_signal == QUEUED_CALLS, log_text
    assert saw_not_serving, log_text
    assert seen == [SERVING, NOT_SERVING]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Every queued call completes with its embedding.
    assert [len(result.results) for result in results] == [1] * QUEUED_CALLS
    assert status == 0, log_text
    assert "received SIGTERM" in log_text
