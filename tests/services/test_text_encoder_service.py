"""Tests of services.text_encoder over a real gRPC channel, with the real model on CPU."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from encoders.text import TextEncoder, load_text_encoder
from pq.v1 import text_encoder_pb2, text_encoder_pb2_grpc
from services.common.embedding_codec import from_message
from services.common.settings import SettingsError
from services.text_encoder import SERVICE_NAME, TextEncoderSettings, create_server

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_BATCH_SIZE = 8

TEXTS = [
    "Wireless over-ear headphones with active noise cancelling.",
    "Stainless steel water bottle, 500 ml",
    "不锈钢保温杯 500毫升",
]
LONG_TEXT = "This board game has very detailed rules about trading resources. " * 80


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder(device="cpu")


@pytest.fixture(scope="module")
def channel(encoder: TextEncoder) -> Iterator[grpc.Channel]:
    settings = TextEncoderSettings(max_batch_size=MAX_BATCH_SIZE, max_workers=2, device="cpu")
    service, port = create_server("127.0.0.1:0", settings, encoder)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> text_encoder_pb2_grpc.TextEncoderServiceStub:
    return text_encoder_pb2_grpc.TextEncoderServiceStub(channel)


def embed(
    stub: text_encoder_pb2_grpc.TextEncoderServiceStub, texts: list[str]
) -> text_encoder_pb2.EmbedTextsResponse:
    return stub.EmbedTexts(text_encoder_pb2.EmbedTextsRequest(texts=texts), timeout=60)


def test_embed_happy_path(stub, encoder: TextEncoder) -> None:
    response = embed(stub, TEXTS)
    expected = encoder.embed(TEXTS)

    assert response.model_id == encoder.model_id
    assert re.fullmatch(r"all-minilm-l6-v2\.mean\.256@[0-9a-f]{8}", response.model_id)
    assert response.embedding_dim == 384
    assert response.max_tokens == 256
    assert len(response.results) == len(TEXTS)
    for index, result in enumerate(response.results):
        vector = from_message(result.embedding)
        assert result.embedding.dimension == 384
        # Request order is kept: row i is the embedding of text i.
        np.testing.assert_allclose(vector, expected.vectors[index], atol=1e-6)
        assert result.token_count == expected.token_counts[index]
        assert result.truncated is False


def test_long_text_reported_truncated(stub) -> None:
    response = embed(stub, ["Cotton T-shirt", LONG_TEXT])
    assert [result.truncated for result in response.results] == [False, True]
    assert response.results[1].token_count == 256
    assert response.results[0].token_count < 256


def test_empty_request_rejected(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, [])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one text" in raised.value.details()


def test_too_many_texts_rejected(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, ["a product"] * (MAX_BATCH_SIZE + 1))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"maximum batch size of {MAX_BATCH_SIZE}" in raised.value.details()


def test_blank_text_names_index(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, ["a product", " \t\n ", "another product"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1] is empty or only white space" in raised.value.details()

    # The failed call must leave the server serving.
    response = embed(stub, ["a product"])
    assert len(response.results) == 1


@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x01", " \ue000 \u0301 "])
def test_invisible_text_names_index(stub, text: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, ["a product", text])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1] contains only white space and control" in raised.value.details()

    response = embed(stub, ["a product"])
    assert len(response.results) == 1


def test_many_blank_texts_listed(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, ["", "x", "", " ", "", "", "", "  "])
    details = raised.value.details()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("texts[0], texts[2], texts[3], texts[4], texts[5] and 2 more are empty")


def test_health_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_settings_defaults() -> None:
    settings = TextEncoderSettings.from_env({})
    assert settings.address == "127.0.0.1:50052"
    assert settings.backbone == "all-minilm-l6-v2"
    assert settings.max_tokens == 256
    assert settings.device == "auto"
    assert settings.max_message_bytes == 32 * 1024 * 1024


def test_settings_read_environment() -> None:
    environ = {"PQ_TEXT_ENCODER_MAX_TOKENS": "128", "PQ_TEXT_ENCODER_LOG_LEVEL": "debug"}
    settings = TextEncoderSettings.from_env(environ)
    assert settings.max_tokens == 128
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PQ_TEXT_ENCODER_MAX_TOKENS", "600"),
        ("PQ_TEXT_ENCODER_BACKBONE", "bert-huge"),
        ("PQ_TEXT_ENCODER_DEVICE", "gpu"),
        ("PQ_TEXT_ENCODER_MAX_BATCH_SIZE", "0"),
        ("PQ_TEXT_ENCODER_LOG_LEVEL", "loud"),
    ],
)
def test_settings_invalid_value(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        TextEncoderSettings.from_env({variable: value})


def _service_environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PQ_TEXT_ENCODER_")}
    environment.update(variables)
    return environment


def test_main_logs_start_and_stop(encoder: TextEncoder) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.text_encoder"],
        cwd=REPO_ROOT,
        env=_service_environment(PQ_TEXT_ENCODER_ADDRESS="127.0.0.1:0", PQ_TEXT_ENCODER_DEVICE="cpu"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines = []
        deadline = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"started on port (\d+)", line)
            if match:
                port = int(match.group(1))
        assert port is not None, "".join(lines)
        start_line = lines[-1]
        assert f"model id {encoder.model_id}" in start_line
        assert "backbone all-minilm-l6-v2" in start_line
        assert "device cpu" in start_line
        assert "max_tokens 256" in start_line

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = embed(text_encoder_pb2_grpc.TextEncoderServiceStub(channel), ["a product"])
        assert response.model_id == encoder.model_id

        process.send_signal(signal.SIGTERM)
        remaining = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "stopped" in remaining


def test_main_rejects_invalid_settings() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "services.text_encoder"],
        cwd=REPO_ROOT,
        env=_service_environment(PQ_TEXT_ENCODER_MAX_TOKENS="600"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "PQ_TEXT_ENCODER_MAX_TOKENS='600'" in completed.stderr
