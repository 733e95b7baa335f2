"""Tests of the predictor with a tag attribute column, stored as a string and sent inline, with no encoders."""

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

# Tag columns travel as categorical (string) attributes, as training.stages.feature_schema builds them.
SCHEMA = FeatureSchema(
    numeric_attributes=["price"],
    categorical_attributes=["category", "mechanics"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)
IMAGE_VECTOR = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
TEXT_VECTOR = np.array([0.6, 0.0, 0.8], dtype=np.float32)
STORED_ROW = {"price": 49.0, "category": "strategy", "mechanics": "Worker Placement; Hand Management"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = pd.DataFrame(
        {
            "price": [20.0, 45.0, 60.0, 35.0],
            "category": ["strategy", "family", "strategy", "family"],
            "mechanics": ["Dice Rolling; Hand Management", "Dice Rolling", "Worker Placement", None],
        }
    )
    attribute_encoder = AttributeEncoder(
        ["price"], ["category"], ["price"], tags={"mechanics": "; "}, min_count=1
    ).fit(frame)
    torch.manual_seed(5)
    model = FusionModel(
        FusionConfig(
            image_dim=SCHEMA.image_embedding_dim,
            text_dim=SCHEMA.text_embedding_dim,
            numeric_dim=attribute_encoder.numeric_dim,
            categorical_cardinalities=attribute_encoder.categorical_cardinalities,
            hidden_dim=16,
            modality_dim=8,
            categorical_embedding_dim=4,
        )
    )
    metadata = CheckpointMetadata(
        model_version="test-tags-20260101T000000",
        label_name="avg_rating",
        label_scaling=LabelScaling("regression", mean=7.0, std=0.5),
        feature_schema=SCHEMA.to_dict(),
        image_model_id=SCHEMA.image_model_id,
        text_model_id=SCHEMA.text_model_id,
    )
    directory = tmp_path_factory.mktemp("tags") / "checkpoint"
    return save_checkpoint(directory, model, attribute_encoder, metadata)


@pytest.fixture(scope="module")
def stub(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    root = tmp_path_factory.mktemp("tags_store")
    store = FeatureStoreSettings.from_env(
        {}, feast_project="pq_test_predictor_tags", feature_repo_dir=root, feature_data_dir=root / "data"
    )
    write_offline_features(
        store.feature_data_dir,
        SCHEMA,
        ["game-1"],
        pd.DataFrame({name: [value] for name, value in STORED_ROW.items()}),
        IMAGE_VECTOR[None, :],
        TEXT_VECTOR[None, :],
        datetime.now(UTC) - timedelta(hours=1),
    )
    apply_and_materialize(store, SCHEMA)
    settings = PredictorSettings.from_env({}, model_path=checkpoint, device="cpu")
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield predictor_grpc.QualityPredictorServiceStub(channel)
    service.stop(grace_s=0)


def _expected_quality(checkpoint: Path, image: np.ndarray | None, text: np.ndarray | None, row: dict) -> float:
    predictor = FusionPredictor.from_checkpoint(checkpoint, device="cpu")
    inputs = FusionInputs.from_optional([image], [text], [row], image_dim=4, text_dim=3)
    return float(predictor.predict(inputs).quality[0])


def test_inline_tags_string_value(checkpoint: Path, stub) -> None:
    request = predictor_pb2.PredictQualityRequest()
    request.content.attributes["mechanics"].string_value = "Dice Rolling; Hand Management"
    without_tags = predictor_pb2.PredictQualityRequest()
    without_tags.content.attributes["category"].string_value = "strategy"

    response = stub.PredictQuality(request, timeout=60)
    response_without_tags = stub.PredictQuality(without_tags, timeout=60)

    expected = _expected_quality(checkpoint, None, None, {"mechanics": "Dice Rolling; Hand Management"})
    assert response.quality == pytest.approx(expected, abs=1e-6)
    assert response.contributions[2].source == predictor_pb2.INPUT_SOURCE_REQUEST
    assert response.quality != pytest.approx(response_without_tags.quality, abs=1e-6)


def test_stored_tags_by_id(checkpoint: Path, stub) -> None:
    response = stub.PredictQuality(predictor_pb2.PredictQualityRequest(product_id="game-1"), timeout=60)

    expected = _expected_quality(checkpoint, IMAGE_VECTOR, TEXT_VECTOR, STORED_ROW)
    assert response.quality == pytest.approx(expected, abs=1e-6)


def test_inline_tags_override_stored(checkpoint: Path, stub) -> None:
    request = predictor_pb2.PredictQualityRequest(product_id="game-1")
    request.content.attributes["mechanics"].string_value = "Dice Rolling"

    response = stub.PredictQuality(request, timeout=60)

    expected = _expected_quality(checkpoint, IMAGE_VECTOR, TEXT_VECTOR, {**STORED_ROW, "mechanics": "Dice Rolling"})
    assert response.quality == pytest.approx(expected, abs=1e-6)


def test_inline_tags_number_rejected(stub) -> None:
    request = predictor_pb2.PredictQualityRequest()
    request.content.attributes["mechanics"].number_value = 3.0

    with pytest.raises(grpc.RpcError) as raised:
        stub.PredictQuality(request, timeout=60)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attributes['mechanics']" in raised.value.details()
