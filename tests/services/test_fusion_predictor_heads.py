"""The predictor serves every fusion head and returns its attention weights or gates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import torch

from features.config import FeatureStoreSettings
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.schema import FeatureSchema
from fusion.attributes import AttributeEncoder
from fusion.checkpoint import CheckpointMetadata, save_checkpoint
from fusion.inference import FusionInputs, FusionPredictor
from fusion.labels import LabelScaling
from fusion.model import FusionConfig, FusionModel
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor import PredictorSettings, create_server

SCHEMA = FeatureSchema(
    numeric_attributes=["price"],
    categorical_attributes=["brand"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)
IMAGE_VECTOR = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
TEXT_VECTOR = np.array([0.6, 0.0, 0.8], dtype=np.float32)
HEADS = ["concat", "attention", "gated", "transformer"]


def _checkpoint(directory: Path, head: str) -> Path:
    frame = pd.DataFrame({"price": [100.0, 250.0, 900.0, 40.0], "brand": ["acme", "acme", "zen", "zen"]})
    attribute_encoder = AttributeEncoder(["price"], ["brand"], ["price"], min_count=1).fit(frame)
    torch.manual_seed(3)
    model = FusionModel(
        FusionConfig(
            image_dim=SCHEMA.image_embedding_dim,
            text_dim=SCHEMA.text_embedding_dim,
            numeric_dim=attribute_encoder.numeric_dim,
            categorical_cardinalities=attribute_encoder.categorical_cardinalities,
            head=head,
            hidden_dim=16,
            modality_dim=8,
            categorical_embedding_dim=4,
            transformer_heads=2,
            transformer_feedforward_dim=16,
        )
    )
    metadata = CheckpointMetadata(
        model_version=f"test-{head}-20260101T000000",
        label_name="avg_rating",
        label_scaling=LabelScaling("regression", mean=7.0, std=0.5),
        feature_schema=SCHEMA.to_dict(),
        image_model_id=SCHEMA.image_model_id,
        text_model_id=SCHEMA.text_model_id,
    )
    return save_checkpoint(directory / head, model, attribute_encoder, metadata)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStoreSettings:
    root = tmp_path_factory.mktemp("heads_store")
    settings = FeatureStoreSettings.from_env(
        {}, feast_project="pq_test_predictor_heads", feature_repo_dir=root, feature_data_dir=root / "data"
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


@pytest.fixture(params=HEADS)
def served(
    request: pytest.FixtureRequest, store: FeatureStoreSettings, tmp_path: Path
) -> Iterator[tuple[str, Path, predictor_grpc.QualityPredictorServiceStub]]:
    head = request.param
    checkpoint = _checkpoint(tmp_path, head)
    settings = PredictorSettings.from_env({}, model_path=checkpoint, device="cpu")
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield head, checkpoint, predictor_grpc.QualityPredictorServiceStub(channel)
    service.stop(grace_s=0)


def test_head_served_with_its_weights(served) -> None:
    head, checkpoint, stub = served

    response = stub.PredictQuality(predictor_pb2.PredictQualityRequest(product_id="game-1"), timeout=60)
    expected = FusionPredictor.from_checkpoint(checkpoint, device="cpu").predict(
        FusionInputs.from_optional(
            [IMAGE_VECTOR], [TEXT_VECTOR], [{"price": 49.0, "brand": "acme"}], image_dim=4, text_dim=3
        )
    )

    assert response.quality == pytest.approx(float(expected.quality[0]), abs=1e-5)
    has_weights = [c.HasField("attention_weight") for c in response.contributions]
    has_gates = [c.HasField("gate") for c in response.contributions]
    assert has_weights == [head in ("attention", "transformer")] * 3
    assert has_gates == [head == "gated"] * 3
    if head in ("attention", "transformer"):
        assert sum(c.attention_weight for c in response.contributions) == pytest.approx(1.0, abs=1e-5)
    if head == "gated":
        assert all(0.0 <= c.gate <= 1.0 for c in response.contributions)
