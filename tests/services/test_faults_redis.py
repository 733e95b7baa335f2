"""Fault injection: Redis down when the predictor starts and again while it serves.

The online store is a private redis-server on a free 127.0.0.1 port, which the test stops and
starts. The shared Redis of the suite is not used. Each stop saves the data set to the server's
directory, so the restarted server contains the materialized product again.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pandas as pd
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from features.config import FeatureStoreSettings
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor import SERVICE_NAME, PredictorSettings, create_server
from tests.features.conftest import RedisServer
from tests.services.fault_support import (
    IMAGE_VECTOR,
    SCHEMA,
    TEXT_VECTOR,
    FakeEncoders,
    save_small_checkpoint,
    start_fake_encoders,
)

Request = predictor_pb2.PredictQualityRequest
Content = predictor_pb2.ProductContent
PRICE = {"price": predictor_pb2.AttributeValue(number_value=49.0)}

FEATURE_STORE = predictor_pb2.INPUT_SOURCE_FEATURE_STORE
COMPUTED = predictor_pb2.INPUT_SOURCE_COMPUTED
MISSING = predictor_pb2.INPUT_SOURCE_MISSING
REQUEST = predictor_pb2.INPUT_SOURCE_REQUEST

ID_ONLY = Request(product_id="game-1")
INLINE = Request(
    product_id="game-1",
    content=Content(image=b"fake-image", title="Castle Builders", attributes=PRICE),
)
TIMEOUT_S = 30.0
# How long the predictor may take to notice that Redis is back.
RECOVERY_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_saving(server: RedisServer) -> None:
    """Stop `server` after writing its data set to disk, so a restart loads it again."""
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    try:
        client.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass  # redis-py reports the connection that SHUTDOWN closes as an error
    client.close()
    assert server.process is not None
    server.process.wait(timeout=10)
    server.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def encoders() -> Iterator[FakeEncoders]:
    encoders = start_fake_encoders()
    yield encoders
    encoders.stop()


def materialized_store(server: RedisServer, root: Path) -> FeatureStoreSettings:
    settings = FeatureStoreSettings.from_env(
        {},
        online_store="redis",
        redis_connection_string=server.address,
        redis_timeout_s=0.5,
        feast_project=f"pq_test_faults_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=root,
        feature_data_dir=root / "data",
    )
    write_offline_features(
        settings.feature_data_dir,
        SCHEMA,
        ["game-1"],
        pd.DataFrame({"price": [49.0], "brand": ["acme"]}),
        IMAGE_VECTOR[None, :],
        TEXT_VECTOR[None, :],
        datetime.now(UTC) - timedelta(hours=1),
    )
    apply_and_materialize(settings, SCHEMA)
    return settings


def sources(response: predictor_pb2.PredictQualityResponse) -> list[int]:
    return [contribution.source for contribution in response.contributions]


def id_only_error(stub: predictor_grpc.QualityPredictorServiceStub) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.PredictQuality(ID_ONLY, timeout=TIMEOUT_S)
    return raised.value


def wait_for_store(stub: predictor_grpc.QualityPredictorServiceStub) -> predictor_pb2.PredictQualityResponse:
    """Repeat an id-only call until it is scored from the store; fail after RECOVERY_S."""
    deadline = time.monotonic() + RECOVERY_S
    while True:
        try:
            return stub.PredictQuality(ID_ONLY, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_redis_down_then_back(redis_server: RedisServer, encoders: FakeEncoders, tmp_path: Path) -> None:
    redis_server.start()
    store = materialized_store(redis_server, tmp_path / "store")
    stop_saving(redis_server)

    settings = PredictorSettings.from_env(
        {},
        model_path=save_small_checkpoint(tmp_path / "checkpoint"),
        image_encoder_address=encoders.image_address,
        text_encoder_address=encoders.text_address,
        device="cpu",
    )
    # Redis is down: the predictor starts anyway.
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S
            )
            down_at_start = id_only_error(stub)
            inline_at_start = stub.PredictQuality(INLINE, timeout=TIMEOUT_S)

            redis_server.start()
            recovered = wait_for_store(stub)

            # Down again in the middle of serving, then back again.
            stop_saving(redis_server)
            down_while_serving = id_only_error(stub)
            inline_while_down = stub.PredictQuality(INLINE, timeout=TIMEOUT_S)
            redis_server.start()
            recovered_again = wait_for_store(stub)
    finally:
        service.stop(grace_s=0)

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert down_at_start.code() == grpc.StatusCode.UNAVAILABLE
    assert "online store" in down_at_start.details()
    # Inline content is embedded now; the stored attributes cannot be read, so only the inline ones count.
    assert sources(inline_at_start) == [COMPUTED, COMPUTED, REQUEST]
    assert sources(recovered) == [FEATURE_STORE, FEATURE_STORE, FEATURE_STORE]
    assert down_while_serving.code() == grpc.StatusCode.UNAVAILABLE
    assert sources(inline_while_down) == [COMPUTED, COMPUTED, REQUEST]
    assert sources(recovered_again) == [FEATURE_STORE, FEATURE_STORE, FEATURE_STORE]
    assert recovered_again.quality == pytest.approx(recovered.quality, abs=1e-6)
