"""Tests of the predictor with a binary-classification checkpoint, a SQLite store and no encoders."""

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
from fusion.model import ConcatFusionModel, FusionConfig
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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = pd.DataFrame({"price": [100.0, 250.0, 900.0, 40.0], "brand": ["acme", "acme", "zen", "zen"]})
    attribute_encoder = AttributeEncoder(["price"], ["brand"], ["price"], min_count=1).fit(frame)
    torch.manual_seed(1)
    model = ConcatFusionModel(
        FusionConfig(
            image_dim=SCHEMA.image_embedding_dim,
            text_dim=SCHEMA.text_embedding_dim,
            numeric_dim=attribute_encoder.numeric_dim,
            categorical_cardinalities=attribute_encoder.categorical_cardinalities,
            task="binary",
            hidden_dim=16,
            modality_dim=8,
            categorical_embedding_dim=4,
        )
    )
    with torch.no_grad():
        model.missing_vectors.normal_()
    metadata = CheckpointMetadata(
        model_version="test-binary-20260101T000000",
        label_name="is_fk_advantage",
        label_scaling=LabelScaling("binary"),
        feature_schema=SCHEMA.to_dict(),
        image_model_id=SCHEMA.image_model_id,
        text_model_id=SCHEMA.text_model_id,
        class_labels=["0", "1"],
    )
    directory = tmp_path_factory.mktemp("binary") / "checkpoint"
    return save_checkpoint(directory, model, attribute_encoder, metadata)


@pytest.fixture(scope="module")
def stub(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[predictor_grpc.QualityPredictorServiceStub]:
    root = tmp_path_factory.mktemp("binary_store")
    store = FeatureStoreSettings.from_env(
        {}, feast_project="pq_test_predictor_binary", feature_repo_dir=root, feature_data_dir=root / "data"
    )
    write_offline_features(
        store.feature_data_dir,
        SCHEMA,
        ["phone-1"],
        pd.DataFrame({"price": [499.0], "brand": ["acme"]}),
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


def test_binary_class_probabilities(checkpoint: Path, stub) -> None:
    response = stub.PredictQuality(predictor_pb2.PredictQualityRequest(product_id="phone-1"), timeout=60)
    expected = FusionPredictor.from_checkpoint(checkpoint, device="cpu").predict(
        FusionInputs.from_optional(
            [IMAGE_VECTOR], [TEXT_VECTOR], [{"price": 499.0, "brand": "acme"}], image_dim=4, text_dim=3
        )
    )

    assert response.label == "is_fk_advantage"
    assert [item.label for item in response.class_probabilities] == ["0", "1"]
    assert response.class_probabilities[1].probability == pytest.approx(response.quality, abs=1e-12)
    assert sum(item.probability for item in response.class_probabilities) == pytest.approx(1.0, abs=1e-12)
    assert response.quality == pytest.approx(float(expected.quality[0]), abs=1e-6)
    assert 0.0 <= response.baseline <= 1.0


def test_attributes_inline_without_encoders(stub) -> None:
    request = predictor_pb2.PredictQualityRequest()
    request.content.attributes["brand"].string_value = "zen"

    response = stub.PredictQuality(request, timeout=60)

    assert [c.source for c in response.contributions] == [
        predictor_pb2.INPUT_SOURCE_MISSING,
        predictor_pb2.INPUT_SOURCE_MISSING,
        predictor_pb2.INPUT_SOURCE_REQUEST,
    ]
    assert list(response.missing_modalities) == [predictor_pb2.MODALITY_IMAGE, predictor_pb2.MODALITY_TEXT]


def test_blank_inline_attribute_missing(stub) -> None:
    request = predictor_pb2.PredictQualityRequest()
    request.content.attributes["brand"].string_value = "  "

    response = stub.PredictQuality(request, timeout=60)

    assert response.contributions[2].source == predictor_pb2.INPUT_SOURCE_MISSING
    assert predictor_pb2.MODALITY_ATTRIBUTES in response.missing_modalities


def test_inline_image_needs_encoder(stub) -> None:
    request = predictor_pb2.PredictQualityRequest(product_id="phone-1")
    request.content.image = b"\x89PNG\r\n\x1a\n"

    with pytest.raises(grpc.RpcError) as raised:
        stub.PredictQuality(request, timeout=60)

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request.content.image needs the image encoder" in raised.value.details()
