"""The fusion predictor serves a boosted checkpoint over real gRPC, reading products from the online store.

The store is materialized once in SQLite and once in Redis, under a Feast project of its own whose
Redis keys are deleted afterwards. No encoder is configured, because every request gives a product id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
from fusion.attributes import AttributeEncoder
from fusion.boosted.checkpoint import save_boosted_checkpoint
from fusion.boosted.model import BoostedFusionModel
from fusion.boosted.predictor import BoostedPredictor
from fusion.checkpoint import CheckpointMetadata
from fusion.inference import FusionInputs, FusionPredictions
from fusion.labels import LabelScaling
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor import PredictorSettings, create_server
from tests.fusion.test_boosted_head import FAST
from tests.services.test_fusion_predictor_heads import IMAGE_VECTOR, SCHEMA, TEXT_VECTOR
from tests.services.test_fusion_predictor_service import REDIS_ADDRESS

TIMEOUT_S = 60.0
TRAIN_ROWS = 150
MODALITIES = [predictor_pb2.MODALITY_IMAGE, predictor_pb2.MODALITY_TEXT, predictor_pb2.MODALITY_ATTRIBUTES]


@dataclass(frozen=True)
class StoredProduct:
    image: np.ndarray | None  # (4,) float32, None when the store has no image embedding
    text: np.ndarray | None  # (3,) float32, None when the store has no text embedding
    attributes: dict[str, object]


# One product with every modality, one without an image and one without text or brand.
PRODUCTS = {
    "game-1": StoredProduct(IMAGE_VECTOR, TEXT_VECTOR, {"price": 49.0, "brand": "acme"}),
    "game-2": StoredProduct(None, TEXT_VECTOR, {"price": 320.0, "brand": "zen"}),
    "game-3": StoredProduct(IMAGE_VECTOR * -1.0, None, {"price": 12.0, "brand": None}),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fit a boosted head on generated products of SCHEMA and save it as a checkpoint."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(TRAIN_ROWS, SCHEMA.image_embedding_dim)).astype(np.float32)
    text = rng.normal(size=(TRAIN_ROWS, SCHEMA.text_embedding_dim)).astype(np.float32)
    attributes = pd.DataFrame(
        {"price": rng.uniform(5.0, 500.0, TRAIN_ROWS), "brand": rng.choice(["acme", "zen"], TRAIN_ROWS)}
    )
    labels = 7.0 + image[:, 0] + 0.7 * text[:, 0] - 0.5 * np.log(attributes["price"].to_numpy())
    encoder = AttributeEncoder(["price"], ["brand"], ["price"], min_count=1).fit(attributes)
    model = BoostedFusionModel(FAST, encoder, "regression", seed=0)
    model.fit(encoder.transform_frame(attributes), image, text, np.ones((TRAIN_ROWS, 3), dtype=bool), labels)
    metadata = CheckpointMetadata(
        model_version="test-boosted-20260101T000000",
        label_name="avg_rating",
        label_scaling=LabelScaling("regression"),
        feature_schema=SCHEMA.to_dict(),
        image_model_id=SCHEMA.image_model_id,
        text_model_id=SCHEMA.text_model_id,
    )
    return save_boosted_checkpoint(tmp_path_factory.mktemp("boosted") / "checkpoint", model, metadata)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStoreSettings]:
    root = tmp_path_factory.mktemp(f"boosted_store_{request.param}")
    settings = FeatureStoreSettings.from_env(
        {},
        online_store=request.param,
        redis_connection_string=REDIS_ADDRESS,
        feast_project=f"pq_test_boosted_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=root,
        feature_data_dir=root / "data",
    )
    missing_image = np.full(SCHEMA.image_embedding_dim, np.nan, dtype=np.float32)
    missing_text = np.full(SCHEMA.text_embedding_dim, np.nan, dtype=np.float32)
    write_offline_features(
        settings.feature_data_dir,
        SCHEMA,
        list(PRODUCTS),
        pd.DataFrame([product.attributes for product in PRODUCTS.values()]),
        np.stack([missing_image if p.image is None else p.image for p in PRODUCTS.values()]),
        np.stack([missing_text if p.text is None else p.text for p in PRODUCTS.values()]),
        datetime.now(UTC) - timedelta(hours=1),
    )
    apply_and_materialize(settings, SCHEMA)
    yield settings

    if request.param == "redis":
        address = parse_redis_connection_string(REDIS_ADDRESS)
        client = redis.Redis(host=address.host, port=address.port, **address.params)
        for key in client.scan_iter(match=b"*" + settings.feast_project.encode()):
            client.delete(key)
        client.close()


@pytest.fixture(scope="module")
def stub(checkpoint: Path, store: FeatureStoreSettings) -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    settings = PredictorSettings.from_env({}, model_path=checkpoint, device="cpu")
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield predictor_grpc.QualityPredictorServiceStub(channel)
    service.stop(grace_s=0)


def _in_process(checkpoint: Path, product_ids: list[str]) -> FusionPredictions:
    """Predict the stored products with BoostedPredictor in this process, as one batch."""
    products = [PRODUCTS[product_id] for product_id in product_ids]
    inputs = FusionInputs.from_optional(
        [p.image for p in products],
        [p.text for p in products],
        [p.attributes for p in products],
        image_dim=SCHEMA.image_embedding_dim,
        text_dim=SCHEMA.text_embedding_dim,
    )
    return BoostedPredictor.from_checkpoint(checkpoint).predict(inputs)


def _assert_matches(response: predictor_pb2.PredictQualityResponse, expected: FusionPredictions, row: int) -> None:
    assert [c.modality for c in response.contributions] == MODALITIES
    assert response.quality == pytest.approx(float(expected.quality[row]), rel=0, abs=1e-9)
    assert response.baseline == pytest.approx(float(expected.baseline[row]), rel=0, abs=1e-9)
    served = [c.contribution for c in response.contributions]
    np.testing.assert_allclose(served, expected.contributions[row], rtol=0, atol=1e-9)


@pytest.mark.parametrize("product_id", list(PRODUCTS))
def test_by_id_matches_in_process(checkpoint: Path, stub, product_id: str) -> None:
    """A product read by id gets the quality, baseline and contributions of BoostedPredictor in process."""
    product = PRODUCTS[product_id]
    present = [product.image is not None, product.text is not None, True]

    response = stub.PredictQuality(predictor_pb2.PredictQualityRequest(product_id=product_id), timeout=TIMEOUT_S)

    _assert_matches(response, _in_process(checkpoint, [product_id]), 0)
    assert response.product_id == product_id
    assert response.model_version == "test-boosted-20260101T000000"
    assert not any(c.HasField("attention_weight") or c.HasField("gate") for c in response.contributions)
    for contribution, is_present in zip(response.contributions, present, strict=True):
        if is_present:
            assert contribution.source == predictor_pb2.INPUT_SOURCE_FEATURE_STORE
        else:
            assert contribution.source == predictor_pb2.INPUT_SOURCE_MISSING
            assert contribution.contribution == 0.0
    assert list(response.missing_modalities) == [m for m, p in zip(MODALITIES, present, strict=True) if not p]


def test_batch_has_contributions_for_every_product(checkpoint: Path, stub) -> None:
    """A batch by id returns three contributions per product that add up to quality - baseline."""
    product_ids = list(PRODUCTS)
    batch = predictor_pb2.PredictQualityBatchRequest(
        requests=[predictor_pb2.PredictQualityRequest(product_id=product_id) for product_id in product_ids]
    )

    responses = list(stub.PredictQualityBatch(batch, timeout=TIMEOUT_S).responses)

    expected = _in_process(checkpoint, product_ids)
    assert [r.product_id for r in responses] == product_ids
    for row, response in enumerate(responses):
        _assert_matches(response, expected, row)
        total = sum(c.contribution for c in response.contributions)
        assert total == pytest.approx(response.quality - response.baseline, rel=0, abs=1e-9)
    assert len({round(r.quality, 6) for r in responses}) == len(responses)  # a distinct quality per product
