"""Small fitted encoders, models and checkpoints shared by the fusion tests."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.attributes import AttributeEncoder
from fusion.checkpoint import CheckpointMetadata, save_checkpoint
from fusion.labels import LabelScaling
from fusion.model import ConcatFusionModel, FusionConfig

IMAGE_DIM = 12
TEXT_DIM = 6


@pytest.fixture
def encoder() -> AttributeEncoder:
    frame = pd.DataFrame(
        {
            "price": [5.0, 20.0, 80.0, 300.0, np.nan, 12.0],
            "players": [2.0, 4.0, 3.0, 2.0, 5.0, 4.0],
            "category": ["a", "b", "a", "b", "c", "a"],
        }
    )
    return AttributeEncoder(["price", "players"], ["category"], ["price"], min_count=1).fit(frame)


@pytest.fixture
def make_checkpoint(tmp_path: Path, encoder: AttributeEncoder) -> Callable[..., Path]:
    """Return a factory that saves a randomly initialised model as a checkpoint and returns its directory."""

    def make(task: str = "regression", name: str = "checkpoint", seed: int = 0) -> Path:
        torch.manual_seed(seed)
        config = FusionConfig(
            image_dim=IMAGE_DIM,
            text_dim=TEXT_DIM,
            numeric_dim=encoder.numeric_dim,
            categorical_cardinalities=encoder.categorical_cardinalities,
            task=task,
            hidden_dim=32,
            modality_dim=8,
            categorical_embedding_dim=4,
        )
        model = ConcatFusionModel(config)
        # Random missing vectors, so that subsets of modalities give clearly different predictions.
        with torch.no_grad():
            model.missing_vectors.normal_()
        scaling = LabelScaling(task="regression", mean=6.5, std=1.5) if task == "regression" else LabelScaling("binary")
        metadata = CheckpointMetadata(
            model_version=f"test-{task}",
            label_name="avg_rating" if task == "regression" else "is_good",
            label_scaling=scaling,
            feature_schema={"numeric_attributes": ["price", "players"], "categorical_attributes": ["category"]},
            image_model_id="image-test@00000000",
            text_model_id="text-test@00000000",
            class_labels=["0", "1"] if task == "binary" else [],
            metrics={"validation": {"r2": 0.5, "roc_auc": float("nan")}},
            training_config={"epochs": 1},
            seed=seed,
        )
        return save_checkpoint(tmp_path / name, model, encoder, metadata)

    return make


@pytest.fixture
def make_inputs() -> Callable[..., tuple[np.ndarray, np.ndarray, list[dict[str, object]]]]:
    """Return a factory of random image (n, IMAGE_DIM) and text (n, TEXT_DIM) embeddings and attribute rows."""

    def make(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict[str, object]]]:
        rng = np.random.default_rng(seed)
        image = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
        text = rng.normal(size=(n, TEXT_DIM)).astype(np.float32)
        categories = ["a", "b", "c", "unseen"]
        rows: list[dict[str, object]] = [
            {"price": float(rng.uniform(1, 500)), "players": float(rng.integers(1, 6)), "category": categories[i % 4]}
            for i in range(n)
        ]
        return image, text, rows

    return make
