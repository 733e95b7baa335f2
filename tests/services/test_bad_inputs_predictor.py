"""Hostile inputs sent to the fusion predictor over a real gRPC channel.

The predictor runs on a free port with a fusion checkpoint trained for a few steps, and reads a real
Redis online store under its own Feast project, whose keys are deleted afterwards. No encoder is
configured, because every case here is decided before an encoder would be called. Every case checks
the status code, the message and that the predictor still scores a stored product afterwards.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import redis

from features.config import FeatureStoreSettings, parse_redis_connection_string
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.schema import FeatureSchema
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.common.interceptor import MAX_DETAILS_BYTES
from services.fusion_predictor import PredictorSettings, create_server
from tests.services.test_fusion_predictor_service import REDIS_ADDRESS, closed_port, train_checkpoint

TIMEOUT_S = 60.0
MAX_BATCH_SIZE = 8

Request = predictor_pb2.PredictQualityRequest
Batch = predictor_pb2.PredictQualityBatchRequest
Content = predictor_pb2.ProductContent

# train_checkpoint fits the attributes price (log scale), players and category.
SCHEMA = FeatureSchema(
    numeric_attributes=["price", "players"],
    categorical_attributes=["category"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=8,
    text_embedding_dim=6,
)
STORED_ROWS = {
    "normal": {"price": 30.0, "players": 3.0, "category": "family"},
    # Finite, so Feast stores it, but far outside the training range of 1 to 6 players.
    "huge-players": {"price": 30.0, "players": 1e300, "category": "family"},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStoreSettings]:
    root = tmp_path_factory.mktemp("bad_inputs_store")
    settings = FeatureStoreSettings.from_env(
        {},
        online_store="redis",
        redis_connection_string=REDIS_ADDRESS,
        feast_project=f"pq_test_bad_inputs_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=root,
        feature_data_dir=root / "data",
    )
    product_ids = list(STORED_ROWS)
    write_offline_features(
        settings.feature_data_dir,
        SCHEMA,
        product_ids,
        pd.DataFrame([STORED_ROWS[product_id] for product_id in product_ids]),
        np.full((len(product_ids), SCHEMA.image_embedding_dim), np.nan, dtype=np.float32),
        np.full((len(product_ids), SCHEMA.text_embedding_dim), np.nan, dtype=np.float32),
        datetime.now(UTC) - timedelta(days=1),
    )
    apply_and_materialize(settings, SCHEMA)
    yield settings

    address = parse_redis_connection_string(REDIS_ADDRESS)
    client = redis.Redis(host=address.host, port=address.port, **address.params)
    for key in client.scan_iter(match=b"*" + settings.feast_project.encode()):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(tmp_path_factory.mktemp("bad_inputs_model") / "checkpoint", SCHEMA)


def predictor_settings(checkpoint: Path) -> PredictorSettings:
    return PredictorSettings.from_env(
        {},
        model_path=checkpoint,
        max_batch_size=MAX_BATCH_SIZE,
        max_workers=2,
        device="cpu",
        write_back=False,
    )


@pytest.fixture(scope="module")
def channel(checkpoint: Path, store: FeatureStoreSettings) -> Iterator[grpc.Channel]:
    service, port = create_server("127.0.0.1:0", predictor_settings(checkpoint), store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> predictor_grpc.QualityPredictorServiceStub:
    return predictor_grpc.QualityPredictorServiceStub(channel)


def attributes(**values: float | str) -> Content:
    content = Content()
    for name, value in values.items():
        if isinstance(value, str):
            content.attributes[name].string_value = value
        else:
            content.attributes[name].number_value = value
    return content


def rpc_error(call: grpc.UnaryUnaryMultiCallable, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT_S)
    return raised.value


def assert_still_serving(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    response = stub.PredictQuality(Request(product_id="normal"), timeout=TIMEOUT_S)
    assert math.isfinite(response.quality)


def test_huge_product_id_not_found(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    # Before the message quoted a shortened id, the 1 MB status message exceeded the client's
    # 16 KiB trailer limit and the client saw RESOURCE_EXHAUSTED instead of NOT_FOUND.
    huge_id = "p" * 1_000_000

    error = rpc_error(stub.PredictQuality, Request(product_id=huge_id))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith(f"request.product_id {'p' * 80!r}... (1,000,000 characters) has no")
    assert len(error.details().encode()) < MAX_DETAILS_BYTES
    assert_still_serving(stub)


def test_huge_non_ascii_id_in_batch(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    # grpc percent-encodes non-ASCII bytes in the status trailer, so 10,000 "é" took 60 KB there.
    batch = Batch(requests=[Request(product_id="normal"), Request(product_id="é" * 10_000)])

    error = rpc_error(stub.PredictQualityBatch, batch)

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().startswith(f"requests[1].product_id {'é' * 80!r}... (10,000 characters)")
    assert_still_serving(stub)


def unknown_names(count: int) -> Content:
    content = Content()
    for index in range(count):
        content.attributes[f"colour_{index:04d}"].string_value = "red"
    return content


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            attributes(price="9" * 1_000_000),
            f"request.content.attributes['price'] is numeric but string_value {'9' * 80!r}... "
            "(1,000,000 characters) was given; send number_value",
        ),
        (
            attributes(**{"k" * 100_000: "x"}),
            f"request.content.attributes has unknown attribute names {'k' * 80!r}... (100,000 characters); "
            "the model's attributes are 'price', 'players', 'category'",
        ),
        (
            unknown_names(5000),
            "request.content.attributes has unknown attribute names 'colour_0000', 'colour_0001', "
            "'colour_0002', 'colour_0003', 'colour_0004' and 4995 more; the model's attributes are "
            "'price', 'players', 'category'",
        ),
    ],
    ids=["numeric-given-1mb-string", "unknown-name-100kb", "5000-unknown-names"],
)
def test_huge_values_shortened_in_message(
    stub: predictor_grpc.QualityPredictorServiceStub, content: Content, expected: str
) -> None:
    error = rpc_error(stub.PredictQuality, Request(content=content))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == expected
    assert_still_serving(stub)


def test_store_unavailable_huge_id(checkpoint: Path) -> None:
    unreachable = FeatureStoreSettings.from_env(
        {}, online_store="redis", redis_connection_string=f"127.0.0.1:{closed_port()}", redis_timeout_s=0.5
    )
    service, port = create_server("127.0.0.1:0", predictor_settings(checkpoint), store_settings=unreachable)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            error = rpc_error(stub.PredictQuality, Request(product_id="p" * 1_000_000))
            inline = stub.PredictQuality(Request(content=attributes(players=2.0)), timeout=TIMEOUT_S)
    finally:
        service.stop(grace_s=0)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    expected_start = f"request gives only product_id {'p' * 80!r}... (1,000,000 characters),"
    assert error.details().startswith(expected_start)
    assert "online store is unavailable" in error.details()
    assert math.isfinite(inline.quality)


@pytest.mark.parametrize("players", [1e300, -1e300, 1e30])
def test_inline_number_too_large_rejected(
    stub: predictor_grpc.QualityPredictorServiceStub, players: float
) -> None:
    # Before the check, these finite numbers overflowed float32 in the model, and the predictor
    # returned OK with quality NaN.
    error = rpc_error(stub.PredictQuality, Request(content=attributes(players=players, category="family")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "request.content.attributes give numbers the model cannot score, so its prediction is not "
        f"finite: 'players'={players:g}; send values in the range of real products"
    )
    assert_still_serving(stub)


def test_batch_number_too_large_names_index(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    batch = Batch(
        requests=[
            Request(product_id="normal"),
            Request(product_id="normal", content=attributes(price=20.0, players=1e300)),
        ]
    )

    error = rpc_error(stub.PredictQualityBatch, batch)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("requests[1].content.attributes give numbers the model cannot score")
    assert "'players'=1e+300" in error.details()
    assert "'price'=20" in error.details()
    assert_still_serving(stub)


@pytest.mark.parametrize("players", [1e6, 0.0, -3.0])
def test_unusual_finite_number_scored(
    stub: predictor_grpc.QualityPredictorServiceStub, players: float
) -> None:
    response = stub.PredictQuality(Request(content=attributes(players=players)), timeout=TIMEOUT_S)

    assert math.isfinite(response.quality)
    assert math.isfinite(response.baseline)
    assert all(math.isfinite(contribution.contribution) for contribution in response.contributions)


def test_stored_number_too_large_internal(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    error = rpc_error(stub.PredictQuality, Request(product_id="huge-players"))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == (
        "the prediction for request (product_id 'huge-players') is not finite; its stored numeric "
        "attributes are probably far outside the training range"
    )
    assert_still_serving(stub)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x0a\x03\xed\xa0\x80", "String field had bad UTF-8"),  # product_id: a UTF-8 encoded surrogate
        (b"\x0a\x05ab", "Wire format was corrupt"),  # product_id: 5 bytes announced, 2 sent
    ],
    ids=["product-id-not-utf8", "truncated"],
)
def test_request_not_parsable(
    channel: grpc.Channel, stub: predictor_grpc.QualityPredictorServiceStub, payload: bytes, reason: str
) -> None:
    send = channel.unary_unary(
        "/pq.v1.QualityPredictorService/PredictQuality", request_serializer=None, response_deserializer=None
    )

    error = rpc_error(send, payload)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pq.v1.PredictQualityRequest" in error.details()
    assert reason in error.details()
    assert_still_serving(stub)
