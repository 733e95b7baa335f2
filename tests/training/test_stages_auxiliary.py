"""Tests of how the main job's training stage uses a spec's auxiliary labels, and the option that turns them off."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fusion.checkpoint import load_checkpoint
from training.catalogue import PRODUCTS_FILE, load_catalogue
from training.pipeline import parse_options
from training.spec import spec_from_dict
from training.stages import EmbeddedCatalogue, train_and_save


@pytest.fixture
def embedded(tmp_path: Path) -> EmbeddedCatalogue:
    spec = spec_from_dict(
        {
            "name": "auxiliary",
            "id_column": "product_id",
            "image_column": "image_path",
            "text_columns": ["title"],
            "numeric_columns": ["price"],
            "label_column": "good",
            "task": "binary",
            "auxiliary_labels": {"stars": "regression"},
            "excluded_columns": {"stars": {"kind": "leak", "reason": "Given by buyers."}},
        }
    )
    rng = np.random.default_rng(0)
    n = 40
    with open(tmp_path / PRODUCTS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product_id", "image_path", "title", "price", "good", "stars"])
        for index in range(n):
            stars = f"{rng.uniform(1, 5):.1f}" if index % 4 else ""
            writer.writerow([f"P{index:03d}", "", f"Product {index}", 10 + index, index % 2, stars])
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


@pytest.mark.parametrize("use_auxiliary_labels", [True, False])
def test_train_and_save_auxiliary_labels(embedded: EmbeddedCatalogue, tmp_path: Path, use_auxiliary_labels: bool) -> None:
    trained = train_and_save(
        embedded,
        embedded.catalogue.split(seed=0),
        checkpoint_dir=tmp_path / "model",
        model_version="test-auxiliary",
        seed=0,
        epochs=2,
        device="cpu",
        use_auxiliary_labels=use_auxiliary_labels,
    )

    bundle = load_checkpoint(trained.checkpoint_dir)
    scalings = bundle.metadata.training_config["auxiliary_label_scalings"]
    if use_auxiliary_labels:
        assert bundle.config.auxiliary_tasks == (("stars", "regression"),)
        assert set(scalings) == {"stars"}
        assert 1.0 <= scalings["stars"]["mean"] <= 5.0
    else:
        assert bundle.config.auxiliary_tasks == ()
        assert scalings == {}


def test_no_auxiliary_labels_option() -> None:
    assert parse_options(["--fusion-head", "concat"]).auxiliary_labels is True
    assert parse_options(["--fusion-head", "concat", "--no-auxiliary-labels"]).auxiliary_labels is False
