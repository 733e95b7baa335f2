from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest

from features.offline import write_offline_features
from features.schema import FeatureSchema
from training.catalogue import load_catalogue
from training.experiment_data import ExperimentDataError, load_experiment_data
from training.sample import generate_sample_catalogue
from training.spec import load_spec


def _write_run(tmp_path, catalogue, stored_ids):
    spec = catalogue.spec
    schema = FeatureSchema(
        numeric_attributes=list(spec.numeric_columns),
        categorical_attributes=list(spec.categorical_columns),
        image_model_id="test-image@1",
        text_model_id="test-text@1",
        image_embedding_dim=4,
        text_embedding_dim=3,
    )
    rows = [catalogue.product_ids.index(product_id) for product_id in stored_ids]
    image = np.arange(len(catalogue) * 4, dtype=np.float32).reshape(-1, 4)[rows]  # row i contains 4i..4i+3
    text = np.arange(len(catalogue) * 3, dtype=np.float32).reshape(-1, 3)[rows]
    image[0] = np.nan  # the first stored product has no image embedding
    run_dir = tmp_path / "run"
    write_offline_features(
        run_dir / "features", schema, stored_ids, catalogue.attributes().iloc[rows], image, text,
        datetime(2025, 1, 1, tzinfo=timezone.utc),
    )
    return run_dir


def test_loader_aligns_embeddings(tmp_path):
    root = generate_sample_catalogue(tmp_path / "catalogue", n_products=12, seed=0)
    catalogue = load_catalogue(root, load_spec("sample"))
    stored_ids = list(reversed(catalogue.product_ids))
    run_dir = _write_run(tmp_path, catalogue, stored_ids)

    data = load_experiment_data(run_dir, catalogue_dir=root, spec="sample")

    assert list(data.product_ids) == catalogue.product_ids
    assert data.image.shape == (12, 4)
    assert data.text.shape == (12, 3)
    for row in range(11):  # the last catalogue row was stored first, without an image
        np.testing.assert_array_equal(data.image[row], np.arange(4 * row, 4 * row + 4))
    assert np.isnan(data.image[11]).all()
    np.testing.assert_array_equal(data.text[11], [33.0, 34.0, 35.0])
    np.testing.assert_array_equal(data.labels, catalogue.labels)
    assert list(data.texts.columns) == list(catalogue.spec.text_columns)


def test_loader_keeps_stored_products(tmp_path):
    root = generate_sample_catalogue(tmp_path / "catalogue", n_products=12, seed=0)
    catalogue = load_catalogue(root, load_spec("sample"))
    run_dir = _write_run(tmp_path, catalogue, catalogue.product_ids[:5])

    data = load_experiment_data(run_dir, catalogue_dir=root, spec="sample")

    assert list(data.product_ids) == catalogue.product_ids[:5]
    assert len(data.attributes) == 5


def test_loader_rejects_folder_without_features(tmp_path):
    with pytest.raises(ExperimentDataError, match="feature_schema.json not found"):
        load_experiment_data(tmp_path)


def test_take_keeps_auxiliary_labels_aligned(regression_data):
    score = np.arange(len(regression_data), dtype=np.float64)
    score[1] = np.nan
    data = replace(regression_data, auxiliary_labels={"score": score})

    subset = data.take(np.array([3, 1, 0]))

    np.testing.assert_array_equal(subset.auxiliary_labels["score"], [3.0, np.nan, 0.0])
    assert subset.product_ids.tolist() == [data.product_ids[3], data.product_ids[1], data.product_ids[0]]
    assert data.without("image").auxiliary_labels is data.auxiliary_labels
    assert regression_data.take(np.array([0])).auxiliary_labels is None


def test_auxiliary_labels_length_checked(regression_data):
    with pytest.raises(ExperimentDataError, match="auxiliary_labels"):
        replace(regression_data, auxiliary_labels={"score": np.zeros(3)})
