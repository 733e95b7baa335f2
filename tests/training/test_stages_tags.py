"""Tests of how the training stages carry a spec's tag columns into the feature schema and the checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fusion.checkpoint import load_checkpoint
from training.catalogue import PRODUCTS_FILE, load_catalogue
from training.spec import spec_from_dict
from training.stages import EmbeddedCatalogue, feature_schema, train_and_save

MECHANICS = ["Dice Rolling; Hand Management", "Worker Placement", "Hand Management; Trading", ""]


@pytest.fixture
def embedded(tmp_path: Path) -> EmbeddedCatalogue:
    spec = spec_from_dict(
        {
            "name": "tagged",
            "id_column": "product_id",
            "image_column": "image_path",
            "text_columns": ["title", "mechanics"],
            "numeric_columns": ["price"],
            "categorical_columns": ["category"],
            "tag_columns": {"mechanics": "; "},
            "label_column": "rating",
            "task": "regression",
        }
    )
    rng = np.random.default_rng(0)
    n = 40
    with open(tmp_path / PRODUCTS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product_id", "image_path", "title", "mechanics", "price", "category", "rating"])
        for index in range(n):
            mechanics = MECHANICS[index % len(MECHANICS)]
            rating = 6.0 + ("Hand Management" in mechanics) + rng.normal(0.0, 0.1)
            category = "family" if index % 3 else "strategy"
            writer.writerow([f"G{index:03d}", "", f"Game {index}", mechanics, 10 + index, category, rating])
    catalogue = load_catalogue(tmp_path, spec)
    return EmbeddedCatalogue(
        catalogue=catalogue,
        image_vectors=np.zeros((n, 4), dtype=np.float32),
        image_present=np.zeros(n, dtype=bool),
        text_vectors=rng.normal(size=(n, 3)).astype(np.float32),
        text_present=np.ones(n, dtype=bool),
        attribute_rows=catalogue.attribute_rows(),
        image_model_id="image-test@00000000",
        text_model_id="text-test@00000000",
    )


def test_feature_schema_tags_as_strings(embedded: EmbeddedCatalogue) -> None:
    schema = feature_schema(embedded)

    assert schema.numeric_attributes == ["price"]
    assert schema.categorical_attributes == ["category", "mechanics"]


def test_train_and_save_encodes_tags(embedded: EmbeddedCatalogue, tmp_path: Path) -> None:
    split = embedded.catalogue.split(seed=0)

    trained = train_and_save(
        embedded,
        split,
        checkpoint_dir=tmp_path / "model",
        model_version="test-tags",
        seed=0,
        epochs=2,
        device="cpu",
    )

    bundle = load_checkpoint(trained.checkpoint_dir)
    encoder = bundle.attribute_encoder
    assert encoder.tags == {"mechanics": "; "}
    assert set(encoder.tag_vocabularies["mechanics"]) <= {
        "Dice Rolling",
        "Hand Management",
        "Worker Placement",
        "Trading",
    }
    assert "Hand Management" in encoder.tag_vocabularies["mechanics"]
    assert bundle.config.numeric_dim == 2 + len(encoder.tag_vocabularies["mechanics"]) + 2
