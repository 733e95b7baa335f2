"""Tests of services.fusion_predictor over real gRPC channels.

Everything is real: both encoder services with their models on CPU, and a fusion checkpoint trained
for a few steps on random data. The Feast online store is materialized from parquet sources, once in
SQLite and once in Redis, where the tests use their own Feast project and delete its keys afterwards.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import redis
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from encoders.image import ImageEncoder, decode_image, load_image_encoder
from encoders.text import TextEncoder, load_text_encoder
from features.config import FeatureStoreSettings, parse_redis_connection_string
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.online import EmbeddingWriter, open_reader
from features.schema import FeatureSchema
from fusion.attributes import AttributeEncoder
from fusion.batch import FusionBatch
from fusion.checkpoint import CheckpointMetadata, save_checkpoint
from fusion.inference import FusionInputs, FusionPredictions, FusionPredictor
from fusion.labels import LabelScaling
from fusion.model import ConcatFusionModel, FusionConfig
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services import image_encoder, text_encoder
from services.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from services.common.server import ServiceServer
from services.fusion_predictor import SERVICE_NAME, PredictorSettings, create_server
from services.fusion_predictor.encoder_clients import ImageEncoderClient, TextEncoderClient
from services.image_encoder import ImageEncoderSettings
from services.text_encoder import TextEncoderSettings

MAX_BATCH_SIZE = 8
MAX_IMAGE_PIXELS = 1_000_000
TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_ADDRESS = os.environ.get("PQ_TEST_REDIS", "127.0.0.1:6379")

Request = predictor_pb2.PredictQualityRequest
Batch = predictor_pb2.PredictQualityBatchRequest
Content = predictor_pb2.ProductContent
Value = predictor_pb2.AttributeValue

FEATURE_STORE = predictor_pb2.INPUT_SOURCE_FEATURE_STORE
COMPUTED = predictor_pb2.INPUT_SOURCE_COMPUTED
REQUEST = predictor_pb2.INPUT_SOURCE_REQUEST
MISSING = predictor_pb2.INPUT_SOURCE_MISSING
IMAGE = predictor_pb2.MODALITY_IMAGE
TEXT = predictor_pb2.MODALITY_TEXT
ATTRIBUTES = predictor_pb2.MODALITY_ATTRIBUTES


def catalogue_text(index: int) -> str:
    """Return product `index`'s text as training builds it: title, then description on a new line."""
    return f"{TITLES[index]}\n{DESCRIPTIONS[index]}" if DESCRIPTIONS[index] else TITLES[index]


def png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [png(seed) for seed in range(4)]
TITLES = ["Castle Builders", "Space Traders", "Quick Party Quiz", "River Fishing"]
DESCRIPTIONS = ["Tile placement, Area control", "Trading, Pick-up and deliver", "", "Set collection"]
ATTRIBUTES_BY_ID: dict[str, dict[str, float | str]] = {
    "game-1": {"price": 45.0, "players": 4.0, "category": "strategy"},
    "game-2": {"price": 20.0, "players": 2.0, "category": "family"},
    "game-attrs": {"price": np.nan, "players": 6.0, "category": "party"},
}
# Stored with attributes only; each write-back test uses its own id, because the store is shared.
WRITE_BACK_IDS = ["game-wb-1", "game-wb-2", "game-wb-3"]


@dataclass
class Models:
    image: ImageEncoder
    text: TextEncoder
    image_address: str
    text_address: str
    schema: FeatureSchema
    checkpoint: Path
    reference: FusionPredictor

    def embed_image(self, data: bytes) -> np.ndarray:
        return self.image.embed([decode_image(data, max_pixels=MAX_IMAGE_PIXELS)])[0]  # (Di,)

    def embed_text(self, text: str) -> np.ndarray:
        return self.text.embed([text]).vectors[0]  # (Dt,)

    def predict(
        self, image: np.ndarray | None, text: np.ndarray | None, attributes: dict[str, float | str] | None
    ) -> FusionPredictions:
        inputs = FusionInputs.from_optional(
            [image], [text], [attributes],
            image_dim=self.schema.image_embedding_dim, text_dim=self.schema.text_embedding_dim,
        )
        return self.reference.predict(inputs)


def train_checkpoint(directory: Path, schema: FeatureSchema) -> Path:
    """Train a small ConcatFusionModel for a few steps on random data and save it."""
    rng = np.random.default_rng(0)
    n = 48
    frame = pd.DataFrame(
        {
            "price": rng.uniform(5, 200, n),
            "players": rng.integers(1, 7, n).astype(float),
            "category": rng.choice(["strategy", "family", "party"], n),
        }
    )
    attribute_encoder = AttributeEncoder(["price", "players"], ["category"], ["price"], min_count=1)
    attribute_encoder.fit(frame)
    config = FusionConfig(
        image_dim=schema.image_embedding_dim,
        text_dim=schema.text_embedding_dim,
        numeric_dim=attribute_encoder.numeric_dim,
        categorical_cardinalities=attribute_encoder.categorical_cardinalities,
        hidden_dim=32,
        modality_dim=16,
        categorical_embedding_dim=4,
    )
    torch.manual_seed(0)
    model = ConcatFusionModel(config)

    labels = rng.normal(6.5, 1.0, n)
    scaling = LabelScaling.fit("regression", labels)
    batch = FusionBatch.from_numpy(
        rng.normal(size=(n, schema.image_embedding_dim)).astype(np.float32),
        rng.normal(size=(n, schema.text_embedding_dim)).astype(np.float32),
        attribute_encoder.transform_frame(frame),
        np.ones((n, 3), dtype=bool),
    )
    targets = torch.from_numpy(scaling.to_model_targets(labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(batch.run(model), targets)
        loss.backward()
        optimizer.step()
    model.eval()

    metadata = CheckpointMetadata(
        model_version="test-predictor-20260101T000000",
        label_name="avg_rating",
        label_scaling=scaling,
        feature_schema=schema.to_dict(),
        image_model_id=schema.image_model_id,
        text_model_id=schema.text_model_id,
    )
    return save_checkpoint(directory, model, attribute_encoder, metadata)


def start(service: ServiceServer) -> str:
    service.start()
    return f"127.0.0.1:{service.port}"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    image = load_image_encoder(device="cpu")
    text = load_text_encoder(device="cpu")
    image_service, _ = image_encoder.create_server(
        "127.0.0.1:0",
        ImageEncoderSettings.from_env({}, max_image_pixels=MAX_IMAGE_PIXELS, max_workers=2, device="cpu"),
        image,
    )
    text_service, _ = text_encoder.create_server(
        "127.0.0.1:0", TextEncoderSettings.from_env({}, max_workers=2, device="cpu"), text
    )
    schema = FeatureSchema(
        numeric_attributes=["price", "players"],
        categorical_attributes=["category"],
        image_model_id=image.model_id,
        text_model_id=text.model_id,
        image_embedding_dim=image.embedding_dim,
        text_embedding_dim=text.embedding_dim,
    )
    checkpoint = train_checkpoint(tmp_path_factory.mktemp("predictor") / "checkpoint", schema)
    yield Models(
        image=image,
        text=text,
        image_address=start(image_service),
        text_address=start(text_service),
        schema=schema,
        checkpoint=checkpoint,
        reference=FusionPredictor.from_checkpoint(checkpoint, device="cpu"),
    )
    image_service.stop(grace_s=0)
    text_service.stop(grace_s=0)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(
    request: pytest.FixtureRequest, models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeatureStoreSettings]:
    root = tmp_path_factory.mktemp(f"store_{request.param}")
    settings = FeatureStoreSettings.from_env(
        {},
        online_store=request.param,
        redis_connection_string=REDIS_ADDRESS,
        feast_project=f"pq_test_predictor_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=root,
        feature_data_dir=root / "data",
    )
    product_ids = [*ATTRIBUTES_BY_ID, *WRITE_BACK_IDS]
    default_row = {"price": 30.0, "players": 3.0, "category": "family"}
    rows = [ATTRIBUTES_BY_ID.get(product_id, default_row) for product_id in product_ids]
    missing_image = np.full(models.schema.image_embedding_dim, np.nan, dtype=np.float32)
    missing_text = np.full(models.schema.text_embedding_dim, np.nan, dtype=np.float32)
    image_vectors = [models.embed_image(IMAGES[0]), models.embed_image(IMAGES[1])]
    text_vectors = [models.embed_text(catalogue_text(0)), models.embed_text(catalogue_text(1))]
    write_offline_features(
        settings.feature_data_dir,
        models.schema,
        product_ids,
        pd.DataFrame(rows),
        np.stack(image_vectors + [missing_image] * (len(product_ids) - 2)),
        np.stack(text_vectors + [missing_text] * (len(product_ids) - 2)),
        datetime.now(UTC) - timedelta(days=1),
    )
    apply_and_materialize(settings, models.schema)
    yield settings

    if request.param == "redis":
        address = parse_redis_connection_string(REDIS_ADDRESS)
        client = redis.Redis(host=address.host, port=address.port, **address.params)
        for key in client.scan_iter(match=b"*" + settings.feast_project.encode()):
            client.delete(key)
        client.close()


@pytest.fixture(scope="module")
def stub(models: Models, store: FeatureStoreSettings) -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    settings = predictor_settings(models)
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield predictor_grpc.QualityPredictorServiceStub(channel)
    service.stop(grace_s=0)


def predictor_settings(models: Models, **overrides: object) -> PredictorSettings:
    values: dict[str, object] = {
        "model_path": models.checkpoint,
        "image_encoder_address": models.image_address,
        "text_encoder_address": models.text_address,
        "encoder_timeout_s": TIMEOUT_S,
        "max_batch_size": MAX_BATCH_SIZE,
        "max_workers": 4,
        "device": "cpu",
    }
    values.update(overrides)
    return PredictorSettings.from_env({}, **values)


def content(index: int, **attributes: float | str) -> Content:
    message = Content(image=IMAGES[index], title=TITLES[index])
    if DESCRIPTIONS[index]:
        message.description = DESCRIPTIONS[index]
    for name, value in attributes.items():
        if isinstance(value, str):
            message.attributes[name].string_value = value
        else:
            message.attributes[name].number_value = value
    return message


def by_id(product_id: str) -> Request:
    return Request(product_id=product_id)


def predict(stub, request: Request) -> predictor_pb2.PredictQualityResponse:
    return stub.PredictQuality(request, timeout=TIMEOUT_S)


def predict_batch(stub, requests: list[Request]) -> list[predictor_pb2.PredictQualityResponse]:
    reply = stub.PredictQualityBatch(Batch(requests=requests), timeout=TIMEOUT_S)
    return list(reply.responses)


def sources(response: predictor_pb2.PredictQualityResponse) -> list[int]:
    return [contribution.source for contribution in response.contributions]


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=TIMEOUT_S)
    return raised.value


def assert_still_serving(stub) -> None:
    response = predict(stub, by_id("game-1"))
    assert response.product_id == "game-1"


def test_health_serving(models: Models, store: FeatureStoreSettings, stub) -> None:
    service, port = create_server("127.0.0.1:0", predictor_settings(models), store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        service.stop(grace_s=0)


def test_id_only_from_store(models: Models, stub) -> None:
    response = predict(stub, by_id("game-1"))
    expected = models.predict(
        models.embed_image(IMAGES[0]), models.embed_text(catalogue_text(0)), ATTRIBUTES_BY_ID["game-1"]
    )

    assert response.product_id == "game-1"
    assert sources(response) == [FEATURE_STORE, FEATURE_STORE, FEATURE_STORE]
    assert [c.modality for c in response.contributions] == [IMAGE, TEXT, ATTRIBUTES]
    assert list(response.missing_modalities) == []
    assert response.model_version == "test-predictor-20260101T000000"
    assert response.label == "avg_rating"
    assert len(response.class_probabilities) == 0
    assert response.quality == pytest.approx(float(expected.quality[0]), abs=1e-5)
    assert response.baseline == pytest.approx(float(expected.baseline[0]), abs=1e-5)
    contributions = [c.contribution for c in response.contributions]
    assert contributions == pytest.approx(expected.contributions[0].tolist(), abs=1e-5)


def test_inline_only(models: Models, stub) -> None:
    response = predict(
        stub, Request(content=content(2, price=12.0, category="party"))
    )
    expected = models.predict(
        models.embed_image(IMAGES[2]), models.embed_text(TITLES[2]), {"price": 12.0, "category": "party"}
    )

    assert response.product_id == ""
    assert sources(response) == [COMPUTED, COMPUTED, REQUEST]
    assert response.quality == pytest.approx(float(expected.quality[0]), abs=1e-4)
    assert response.baseline == pytest.approx(float(expected.baseline[0]), abs=1e-5)


def test_call_without_deadline(stub) -> None:
    response = stub.PredictQuality(Request(content=content(1)))

    assert sources(response) == [COMPUTED, COMPUTED, MISSING]


def test_inline_overrides_stored(models: Models, stub) -> None:
    request = Request(
        product_id="game-1",
        content=Content(title=TITLES[3], description=DESCRIPTIONS[3]),
    )
    request.content.attributes["price"].number_value = 99.0

    response = predict(stub, request)
    expected = models.predict(
        models.embed_image(IMAGES[0]),
        models.embed_text(catalogue_text(3)),
        {**ATTRIBUTES_BY_ID["game-1"], "price": 99.0},
    )

    assert sources(response) == [FEATURE_STORE, COMPUTED, REQUEST]
    assert response.quality == pytest.approx(float(expected.quality[0]), abs=1e-4)
    assert response.quality != pytest.approx(predict(stub, by_id("game-1")).quality, abs=1e-6)


def test_attributes_only_missing(stub) -> None:
    response = predict(stub, by_id("game-attrs"))

    assert sources(response) == [MISSING, MISSING, FEATURE_STORE]
    assert list(response.missing_modalities) == [IMAGE, TEXT]
    assert response.contributions[0].contribution == 0.0
    assert response.contributions[1].contribution == 0.0


def test_computed_embeddings_written_back(models: Models, store: FeatureStoreSettings, stub) -> None:
    request = Request(product_id="game-wb-1", content=content(3))

    first = predict(stub, request)
    second = predict(stub, by_id("game-wb-1"))
    stored = open_reader(store, models.schema).read(["game-wb-1"])[0]

    assert sources(first) == [COMPUTED, COMPUTED, FEATURE_STORE]
    assert sources(second) == [FEATURE_STORE, FEATURE_STORE, FEATURE_STORE]
    assert second.quality == pytest.approx(first.quality, abs=1e-6)
    assert stored.image_embedding is not None
    assert stored.text_embedding is not None
    np.testing.assert_allclose(stored.image_embedding, models.embed_image(IMAGES[3]), atol=1e-5)


def test_write_back_disabled(models: Models, store: FeatureStoreSettings) -> None:
    settings = predictor_settings(models, write_back=False)
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            predict(stub, Request(product_id="game-wb-2", content=content(3)))
            response = predict(stub, by_id("game-wb-2"))
    finally:
        service.stop(grace_s=0)

    assert sources(response) == [MISSING, MISSING, FEATURE_STORE]


def test_write_back_failure_logged(
    models: Models, store: FeatureStoreSettings, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = FeatureStoreSettings.from_env(
        {}, online_store="redis", redis_connection_string=f"127.0.0.1:{closed_port()}", redis_timeout_s=0.5
    )
    writer = EmbeddingWriter(unreachable, models.schema)
    service, port = create_server(
        "127.0.0.1:0", predictor_settings(models), reader=open_reader(store, models.schema), writer=writer
    )
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            with caplog.at_level(logging.ERROR, logger="services.fusion_predictor.write_back"):
                response = predict(stub, Request(product_id="game-wb-3", content=content(3)))
    finally:
        service.stop(grace_s=0)

    assert sources(response) == [COMPUTED, COMPUTED, FEATURE_STORE]
    assert "write-back of 1 image embedding(s) failed" in caplog.text
    assert "game-wb-3" in caplog.text


def test_unknown_id_not_found(stub) -> None:
    error = rpc_error(stub.PredictQuality, by_id("no-such-game"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-game'" in error.details()
    assert_still_serving(stub)


def test_unknown_id_with_content(stub) -> None:
    response = predict(stub, Request(product_id="new-game", content=content(1)))

    assert response.product_id == "new-game"
    assert sources(response) == [COMPUTED, COMPUTED, MISSING]


@pytest.mark.parametrize(
    ("request_message", "expected"),
    [
        (Request(), "request is empty"),
        (
            Request(content=Content(title="Chess", image=b"not an image")),
            "request.content.image was rejected by the image encoder",
        ),
        (
            Request(
                content=Content(attributes={"weight": Value(number_value=1)})
            ),
            "unknown attribute names 'weight'",
        ),
        (
            Request(
                product_id="game-1",
                content=Content(attributes={"category": Value(number_value=3)}),
            ),
            "attributes['category'] is categorical",
        ),
        (
            Request(content=Content(title=" \t ")),
            "request.content.title is empty or only white space",
        ),
    ],
    ids=["empty", "corrupt-image", "unknown-attribute", "wrong-type", "blank-title"],
)
def test_invalid_request_rejected(stub, request_message: Request, expected: str) -> None:
    error = rpc_error(stub.PredictQuality, request_message)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()
    assert_still_serving(stub)


def test_batch_equals_singles(stub) -> None:
    requests = [
        by_id("game-1"),
        Request(content=content(2, players=3.0)),
        by_id("game-attrs"),
        Request(product_id="batch-new", content=content(0)),
        by_id("game-2"),
    ]

    batch = predict_batch(stub, requests)
    singles = [predict(stub, request) for request in requests]

    assert len(batch) == len(requests)
    for in_batch, single in zip(batch, singles, strict=True):
        assert in_batch.product_id == single.product_id
        assert sources(in_batch) == sources(single)
        assert in_batch.quality == pytest.approx(single.quality, abs=1e-6)
        assert in_batch.baseline == pytest.approx(single.baseline, abs=1e-6)
        for a, b in zip(in_batch.contributions, single.contributions, strict=True):
            assert a.contribution == pytest.approx(b.contribution, abs=1e-6)


def test_concurrent_calls(stub) -> None:
    requests = [
        by_id("game-1"),
        by_id("game-attrs"),
        Request(content=content(2)),
        Request(product_id="concurrent-new", content=content(1)),
    ] * 3
    expected = {request.SerializeToString(): predict(stub, request).quality for request in requests}

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda request: predict(stub, request), requests))

    for request, response in zip(requests, responses, strict=True):
        assert response.quality == pytest.approx(expected[request.SerializeToString()], abs=1e-6)


def test_contributions_sum_to_quality(stub) -> None:
    responses = predict_batch(
        stub,
        [by_id("game-1"), by_id("game-attrs"), Request(content=content(1))],
    )

    for response in responses:
        total = sum(c.contribution for c in response.contributions)
        assert total == pytest.approx(response.quality - response.baseline, abs=1e-9)


def test_batch_error_names_index(stub) -> None:
    requests = [by_id("game-1"), by_id("game-2"), by_id("no-such-game")]
    corrupt = [by_id("game-1"), Request(content=Content(image=b"GIF89a"))]

    not_found = rpc_error(stub.PredictQualityBatch, Batch(requests=requests))
    invalid = rpc_error(stub.PredictQualityBatch, Batch(requests=corrupt))

    assert not_found.code() == grpc.StatusCode.NOT_FOUND
    assert "requests[2].product_id 'no-such-game'" in not_found.details()
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].content.image" in invalid.details()
    assert_still_serving(stub)


@pytest.mark.parametrize("count", [0, MAX_BATCH_SIZE + 1])
def test_batch_size_rejected(stub, count: int) -> None:
    request = Batch(requests=[by_id("game-1")] * count)

    error = rpc_error(stub.PredictQualityBatch, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests" in error.details()
    assert_still_serving(stub)


def test_encoder_not_configured(models: Models, store: FeatureStoreSettings) -> None:
    settings = predictor_settings(models, image_encoder_address="", text_encoder_address="")
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            error = rpc_error(stub.PredictQuality, Request(content=content(0)))
            response = predict(stub, by_id("game-1"))
    finally:
        service.stop(grace_s=0)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS" in error.details()
    assert sources(response) == [FEATURE_STORE, FEATURE_STORE, FEATURE_STORE]


def test_encoder_unavailable(models: Models, store: FeatureStoreSettings) -> None:
    address = f"127.0.0.1:{closed_port()}"
    settings = predictor_settings(models, text_encoder_address=address, encoder_timeout_s=5.0)
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            error = rpc_error(stub.PredictQuality, Request(content=content(0)))
            assert_still_serving(stub)
    finally:
        service.stop(grace_s=0)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert address in error.details()


def test_store_unavailable(models: Models) -> None:
    unreachable = FeatureStoreSettings.from_env(
        {}, online_store="redis", redis_connection_string=f"127.0.0.1:{closed_port()}", redis_timeout_s=0.5
    )
    service, port = create_server("127.0.0.1:0", predictor_settings(models), store_settings=unreachable)
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            error = rpc_error(stub.PredictQuality, by_id("game-1"))
            response = predict(stub, Request(product_id="game-1", content=content(0)))
    finally:
        service.stop(grace_s=0)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "online store" in error.details()
    assert sources(response) == [COMPUTED, COMPUTED, MISSING]


def image_client(models: Models, **overrides: object) -> ImageEncoderClient:
    options: dict[str, object] = {
        "expected_model_id": models.schema.image_model_id,
        "expected_dim": models.schema.image_embedding_dim,
        "timeout_s": TIMEOUT_S,
        "max_items_per_call": 64,
        "max_message_bytes": 32 * 1024 * 1024,
    }
    options.update(overrides)
    address = str(options.pop("address", models.image_address))
    return ImageEncoderClient(address, **options)  # type: ignore[arg-type]


def test_client_chunks_equal_one_call(models: Models) -> None:
    paths = [f"requests[{i}].content.image" for i in range(len(IMAGES))]
    whole = image_client(models)
    chunked = image_client(models, max_items_per_call=3)
    try:
        expected = whole.submit(IMAGES, paths, None).result()
        vectors = chunked.submit(IMAGES, paths, None).result()
    finally:
        whole.close()
        chunked.close()

    assert vectors.shape == (len(IMAGES), models.schema.image_embedding_dim)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_client_error_names_field(models: Models) -> None:
    client = TextEncoderClient(
        models.text_address,
        expected_model_id=models.schema.text_model_id,
        expected_dim=models.schema.text_embedding_dim,
        timeout_s=TIMEOUT_S,
        max_items_per_call=2,
        max_message_bytes=32 * 1024 * 1024,
    )
    paths = [f"requests[{i}].content.title" for i in (0, 3, 5, 7)]
    try:
        with pytest.raises(InvalidArgumentError) as raised:
            client.submit(["Chess", "Go", "Shogi", " "], paths, None).result()
    finally:
        client.close()

    assert raised.value.message.startswith("requests[7].content.title was rejected by the text encoder")


def test_client_model_id_mismatch(models: Models) -> None:
    client = image_client(models, expected_model_id="resnet18.imagenet.224@00000000")
    try:
        with pytest.raises(FailedPreconditionError) as raised:
            client.submit(IMAGES[:1], ["request.content.image"], None).result()
    finally:
        client.close()

    assert "'resnet18.imagenet.224@00000000'" in raised.value.message
    assert repr(models.schema.image_model_id) in raised.value.message


def test_client_deadline_passed(models: Models) -> None:
    client = image_client(models)
    try:
        with pytest.raises(DeadlineExceededError):
            client.submit(IMAGES[:1], ["request.content.image"], remaining_s=0.0)
    finally:
        client.close()


def test_client_unavailable(models: Models) -> None:
    address = f"127.0.0.1:{closed_port()}"
    client = image_client(models, address=address, timeout_s=5.0)
    try:
        with pytest.raises(UnavailableError) as raised:
            client.submit(IMAGES[:1], ["request.content.image"], None).result()
    finally:
        client.close()

    assert address in raised.value.message


def test_serve_starts_and_stops(models: Models, store: FeatureStoreSettings, tmp_path: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    environment = {
        **os.environ,
        "PQ_PREDICTOR_ADDRESS": address,
        "PQ_PREDICTOR_MODEL_PATH": str(models.checkpoint),
        "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": models.image_address,
        "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": models.text_address,
        "PQ_PREDICTOR_DEVICE": "cpu",
        "PQ_ONLINE_STORE": store.online_store,
        "PQ_REDIS_CONNECTION_STRING": store.redis_connection_string,
        "PQ_FEAST_PROJECT": store.feast_project,
        "PQ_FEATURE_REPO_DIR": str(store.feature_repo_dir),
        "PQ_FEATURE_DATA_DIR": str(store.feature_data_dir),
    }
    log_path = tmp_path / "predictor.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.fusion_predictor"],
            cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
            response = predict(predictor_grpc.QualityPredictorServiceStub(channel), by_id("game-1"))
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()

    assert response.product_id == "game-1"
    assert status == 0
    assert "model test-predictor-20260101T000000" in log_text
    assert f"started on port {address.rsplit(':', 1)[1]}" in log_text
    assert "stopped" in log_text


def test_serve_without_model_path(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PQ_PREDICTOR_")}

    result = subprocess.run(
        [sys.executable, "-m", "services.fusion_predictor"],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )

    assert result.returncode == 2
    assert "PQ_PREDICTOR_MODEL_PATH is not set" in result.stderr
