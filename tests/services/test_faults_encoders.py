"""Fault injection: an encoder that is down, slow or overloaded, with the predictor failing or degrading.

The encoders are fakes on real gRPC servers (tests.services.fault_support), so each test sets the
delay or status it needs. The requests carry inline content and no product id, so they never read
the online store, which points at a closed port.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from features.config import FeatureStoreSettings
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor import PredictorSettings, create_server
from tests.services.fault_support import (
    FakeEncoders,
    restart_text_encoder,
    save_small_checkpoint,
    start_fake_encoders,
)

Request = predictor_pb2.PredictQualityRequest
Content = predictor_pb2.ProductContent
PRICE = {"price": predictor_pb2.AttributeValue(number_value=49.0)}

COMPUTED = predictor_pb2.INPUT_SOURCE_COMPUTED
REQUEST = predictor_pb2.INPUT_SOURCE_REQUEST
ENCODER_FAILED = predictor_pb2.INPUT_SOURCE_ENCODER_FAILED
IMAGE = predictor_pb2.MODALITY_IMAGE
TEXT = predictor_pb2.MODALITY_TEXT

# The fake encoders accept any bytes as an image.
FULL_REQUEST = Request(
    content=Content(image=b"fake-image", title="Castle Builders", attributes=PRICE)
)
WITHOUT_IMAGE = Request(
    content=Content(title="Castle Builders", attributes=PRICE)
)
SLOW_S = 10.0
TIMEOUT_S = 60.0


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_checkpoint(tmp_path_factory.mktemp("faults") / "checkpoint")


@pytest.fixture(scope="module")
def module_encoders() -> Iterator[FakeEncoders]:
    encoders = start_fake_encoders()
    yield encoders
    encoders.stop()


@pytest.fixture
def encoders(module_encoders: FakeEncoders) -> FakeEncoders:
    """Return the fake encoders, reset to respond at once with vectors."""
    for behaviour in (module_encoders.image, module_encoders.text):
        behaviour.delay_s = 0.0
        behaviour.status = None
        behaviour.details = None
    return module_encoders


@contextmanager
def predictor(
    checkpoint: Path, encoders: FakeEncoders, **overrides: object
) -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    values: dict[str, object] = {
        "model_path": checkpoint,
        "image_encoder_address": encoders.image_address,
        "text_encoder_address": encoders.text_address,
        "write_back": False,
        "device": "cpu",
    }
    values.update(overrides)
    store = FeatureStoreSettings.from_env(
        {}, online_store="redis", redis_connection_string=f"127.0.0.1:{closed_port()}", redis_timeout_s=0.5
    )
    service, port = create_server("127.0.0.1:0", PredictorSettings.from_env({}, **values), store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield predictor_grpc.QualityPredictorServiceStub(channel)
    finally:
        service.stop(grace_s=0)


def timed_error(stub: predictor_grpc.QualityPredictorServiceStub, timeout_s: float) -> tuple[grpc.RpcError, float]:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        stub.PredictQuality(FULL_REQUEST, timeout=timeout_s)
    return raised.value, time.monotonic() - start


def sources(response: predictor_pb2.PredictQualityResponse) -> list[int]:
    return [contribution.source for contribution in response.contributions]


def test_healthy_encoders_not_degraded(checkpoint: Path, encoders: FakeEncoders) -> None:
    with predictor(checkpoint, encoders, on_encoder_failure="degrade") as stub:
        response = stub.PredictQuality(FULL_REQUEST, timeout=TIMEOUT_S)

    assert not response.degraded
    assert sources(response) == [COMPUTED, COMPUTED, REQUEST]


def test_slow_encoder_client_deadline(checkpoint: Path, encoders: FakeEncoders) -> None:
    encoders.image.delay_s = SLOW_S
    with predictor(checkpoint, encoders, encoder_timeout_s=5.0) as stub:
        error, elapsed_s = timed_error(stub, timeout_s=1.0)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client's 1 s deadline, not the 5 s encoder timeout, ends the call.
    assert elapsed_s < 3.0


def test_slow_encoder_timeout_unavailable(checkpoint: Path, encoders: FakeEncoders) -> None:
    encoders.image.delay_s = SLOW_S
    with predictor(checkpoint, encoders, encoder_timeout_s=0.5) as stub:
        error, elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "encoder timeout of 0.5 s" in error.details()
    assert encoders.image_address in error.details()
    assert elapsed_s < 5.0


def test_slow_encoder_degraded(checkpoint: Path, encoders: FakeEncoders) -> None:
    encoders.image.delay_s = SLOW_S
    with predictor(
        checkpoint, encoders, on_encoder_failure="degrade", encoder_timeout_s=5.0, encoder_deadline_margin_s=1.0
    ) as stub:
        reference = stub.PredictQuality(WITHOUT_IMAGE, timeout=TIMEOUT_S)
        start = time.monotonic()
        response = stub.PredictQuality(FULL_REQUEST, timeout=3.0)
        elapsed_s = time.monotonic() - start

    assert response.degraded
    assert sources(response) == [ENCODER_FAILED, COMPUTED, REQUEST]
    assert list(response.missing_modalities) == [IMAGE]
    assert response.quality == pytest.approx(reference.quality, abs=1e-6)
    assert elapsed_s < 3.0


def test_encoder_down_degraded(checkpoint: Path, encoders: FakeEncoders) -> None:
    down = f"127.0.0.1:{closed_port()}"
    with predictor(checkpoint, encoders, on_encoder_failure="degrade", text_encoder_address=down) as stub:
        response = stub.PredictQuality(FULL_REQUEST, timeout=TIMEOUT_S)

    assert response.degraded
    assert sources(response) == [COMPUTED, ENCODER_FAILED, REQUEST]
    assert list(response.missing_modalities) == [TEXT]


def test_restarted_encoder_used_again(checkpoint: Path) -> None:
    encoders = start_fake_encoders()
    try:
        with predictor(checkpoint, encoders) as stub:
            stub.PredictQuality(FULL_REQUEST, timeout=TIMEOUT_S)
            encoders.servers[1].stop(0).wait()
            # Failed calls over several seconds let gRPC's reconnect backoff grow.
            down_until = time.monotonic() + 8.0
            while time.monotonic() < down_until:
                error, _elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.5)
            encoders.servers[1] = restart_text_encoder(encoders)
            restarted = time.monotonic()
            while True:
                try:
                    stub.PredictQuality(FULL_REQUEST, timeout=TIMEOUT_S)
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() - restarted < 5.0, "the restarted encoder was not used within 5 s"
                    time.sleep(0.2)
    finally:
        encoders.stop()


def test_encoder_down_fails_by_default(checkpoint: Path, encoders: FakeEncoders) -> None:
    down = f"127.0.0.1:{closed_port()}"
    with predictor(checkpoint, encoders, text_encoder_address=down) as stub:
        error, _elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert down in error.details()


@pytest.mark.parametrize(
    ("encoder_status", "expected"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL),
    ],
)
def test_encoder_status_mapped(
    checkpoint: Path, encoders: FakeEncoders, encoder_status: grpc.StatusCode, expected: grpc.StatusCode
) -> None:
    encoders.text.status = encoder_status
    with predictor(checkpoint, encoders) as stub:
        error, _elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)

    assert error.code() == expected
    assert encoders.text_address in error.details()


def test_encoder_batch_limit_is_configuration(checkpoint: Path, encoders: FakeEncoders) -> None:
    encoders.text.status = grpc.StatusCode.INVALID_ARGUMENT
    encoders.text.details = (
        "EmbedTextsRequest has 10 texts, more than the server's maximum batch size of 4; split it into "
        "requests of at most 4 texts"
    )
    with predictor(checkpoint, encoders, on_encoder_failure="degrade") as stub:
        error, _elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PQ_PREDICTOR_ENCODER_BATCH_SIZE" in error.details()
    assert encoders.text_address in error.details()


def test_degrade_keeps_rejected_content(checkpoint: Path, encoders: FakeEncoders) -> None:
    encoders.image.status = grpc.StatusCode.INVALID_ARGUMENT
    with predictor(checkpoint, encoders, on_encoder_failure="degrade") as stub:
        error, _elapsed_s = timed_error(stub, timeout_s=TIMEOUT_S)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request.content.image" in error.details()
