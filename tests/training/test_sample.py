"""Tests of the synthetic sample catalogue: determinism, layout, and a label that each modality explains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_score

from training.catalogue import PRODUCTS_FILE, Catalogue, load_catalogue
from training.sample import IMAGE_SIZE, generate_sample_catalogue
from training.spec import load_spec


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    root = generate_sample_catalogue(tmp_path_factory.mktemp("sample"), n_products=400, seed=0)
    return load_catalogue(root, load_spec("sample"))


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_sample_deterministic(tmp_path: Path) -> None:
    first = folder_bytes(generate_sample_catalogue(tmp_path / "first", n_products=40, seed=5))
    second = folder_bytes(generate_sample_catalogue(tmp_path / "second", n_products=40, seed=5))
    assert len(first) == 41  # products.csv and 40 images
    assert first == second


def test_sample_seed_changes_output(tmp_path: Path) -> None:
    first = generate_sample_catalogue(tmp_path / "first", n_products=20, seed=1)
    second = generate_sample_catalogue(tmp_path / "second", n_products=20, seed=2)
    assert (first / PRODUCTS_FILE).read_bytes() != (second / PRODUCTS_FILE).read_bytes()


def test_sample_layout(sample: Catalogue) -> None:
    assert len(sample) == 400
    assert sample.missing_image_count == 0
    with Image.open(sample.image_paths()[0]) as image:
        assert image.format == "PNG"
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
    frame = sample.frame
    assert frame["price_usd"].isna().mean() == pytest.approx(0.08, abs=0.04)
    assert frame["brand"].isna().mean() == pytest.approx(0.15, abs=0.05)
    assert frame["category"].nunique() == 5
    assert all(text.count("\n") == 1 for text in sample.texts())


def test_sample_missing_images(tmp_path: Path) -> None:
    root = generate_sample_catalogue(tmp_path, n_products=50, seed=0, missing_image_fraction=0.2)
    catalogue = load_catalogue(root, load_spec("sample"))
    assert len(catalogue) == 50
    assert 3 <= catalogue.missing_image_count <= 20


def test_sample_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_products"):
        generate_sample_catalogue(tmp_path, n_products=0)
    with pytest.raises(ValueError, match="missing_image_fraction"):
        generate_sample_catalogue(tmp_path, missing_image_fraction=1.5)


def image_features(catalogue: Catalogue) -> np.ndarray:
    """Mean brightness, spread, saturation and share of dark pixels per image, (N, 4)."""
    rows = []
    for path in catalogue.image_paths():
        assert path is not None
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
            hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0  # (H, W, 3)
        rows.append([rgb.mean(), rgb.std(), hsv[..., 1].mean(), (rgb.mean(axis=-1) < 0.2).mean()])
    return np.array(rows)


def text_features(catalogue: Catalogue) -> np.ndarray:
    """Word counts of the titles, (N, vocabulary size)."""
    titles = [text.split("\n")[0] for text in catalogue.texts()]
    return CountVectorizer().fit_transform(titles).toarray()


def attribute_features(catalogue: Catalogue) -> np.ndarray:
    """One-hot category, log price (median where missing) with a missing flag, and warranty, (N, 8)."""
    frame = catalogue.attributes()
    price = frame["price_usd"]
    return np.column_stack(
        [
            pd.get_dummies(frame["category"]).to_numpy(dtype=np.float64),
            np.log(price.fillna(price.median())),
            price.isna(),
            frame["warranty_years"],
        ]
    )


def cross_validated_r2(features: np.ndarray, labels: np.ndarray) -> float:
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13))
    return float(cross_val_score(ridge, features, labels, cv=5, scoring="r2").mean())


def test_sample_each_modality_predicts(sample: Catalogue) -> None:
    labels = sample.labels
    image, text, attributes = image_features(sample), text_features(sample), attribute_features(sample)
    scores = {
        "image": cross_validated_r2(image, labels),
        "text": cross_validated_r2(text, labels),
        "attributes": cross_validated_r2(attributes, labels),
        "all": cross_validated_r2(np.hstack([image, text, attributes]), labels),
    }
    for modality in ("image", "text", "attributes"):
        assert scores[modality] > 0.15, scores
    assert scores["all"] > 0.7, scores
    # Leaving any one modality out loses a clear share of the explained variance.
    for left_out, remaining in (
        ("image", [text, attributes]),
        ("text", [image, attributes]),
        ("attributes", [image, text]),
    ):
        without = cross_validated_r2(np.hstack(remaining), labels)
        assert scores["all"] - without > 0.1, (left_out, without, scores)
