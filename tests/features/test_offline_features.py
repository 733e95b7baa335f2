"""Tests of features.offline: the parquet sources of the feature views."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.embedding_bytes import unpack_embedding
from features.errors import OfflineDataError
from features.offline import write_offline_features
from features.schema import FeatureSchema


def _write(data_dir: Path, schema: FeatureSchema, catalogue: Any, **kwargs: Any) -> dict[str, Path]:
    return write_offline_features(
        data_dir,
        schema,
        catalogue.product_ids,
        catalogue.attributes,
        catalogue.image_vectors,
        catalogue.text_vectors,
        catalogue.event_time,
        **kwargs,
    )


def test_offline_writes_one_file_per_view(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    paths = _write(tmp_path, schema, helpers.make_catalogue())
    assert set(paths) == set(schema.view_names)
    assert all(path.exists() for path in paths.values())
    assert FeatureSchema.load(tmp_path / "feature_schema.json") == schema


def test_offline_attribute_columns(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue()
    table = pq.read_table(_write(tmp_path, schema, catalogue)[schema.attributes_view_name])
    assert table.schema.field("product_id").type == pa.string()
    assert table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("price").type == pa.float64()
    assert table.schema.field("brand").type == pa.string()
    assert table["product_id"].to_pylist() == catalogue.product_ids
    # NaN prices are stored as nulls.
    prices = table["price"].to_pylist()
    assert prices[0] is None
    assert prices[1] == pytest.approx(catalogue.attributes["price"][1])
    assert table["brand"].to_pylist()[1] is None


def test_offline_skips_missing_embeddings(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue()
    paths = _write(tmp_path, schema, catalogue)
    images = pq.read_table(paths[schema.image_view_name])
    texts = pq.read_table(paths[schema.text_view_name])
    image_ids = images["product_id"].to_pylist()
    text_ids = texts["product_id"].to_pylist()
    assert image_ids == [pid for index, pid in enumerate(catalogue.product_ids) if index % 4 != 0]
    assert text_ids == [pid for index, pid in enumerate(catalogue.product_ids) if index % 5 != 0]
    assert set(images["image_model_id"].to_pylist()) == {schema.image_model_id}


def test_offline_packs_float32_little_endian(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue()
    images = pq.read_table(_write(tmp_path, schema, catalogue)[schema.image_view_name])
    first = images["image_embedding"].to_pylist()[0]
    assert len(first) == 4 * schema.image_embedding_dim
    assert first == catalogue.image_vectors[1].astype("<f4").tobytes()
    np.testing.assert_array_equal(unpack_embedding(first, schema.image_embedding_dim), catalogue.image_vectors[1])


def test_offline_append_adds_rows(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    first = helpers.make_catalogue(4, prefix="a")
    later = helpers.make_catalogue(3, prefix="b", event_time=first.event_time + timedelta(minutes=5))
    _write(tmp_path, schema, first)
    paths = _write(tmp_path, schema, later, append=True)
    table = pq.read_table(paths[schema.attributes_view_name])
    assert table["product_id"].to_pylist() == first.product_ids + later.product_ids


def test_offline_without_append_replaces(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    _write(tmp_path, schema, helpers.make_catalogue(4, prefix="a"))
    paths = _write(tmp_path, schema, helpers.make_catalogue(3, prefix="b"))
    table = pq.read_table(paths[schema.attributes_view_name])
    assert table["product_id"].to_pylist() == ["b000", "b001", "b002"]


def test_offline_naive_time_is_utc(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue(2, event_time=datetime(2024, 1, 2, 3, 4, 5))
    table = pq.read_table(_write(tmp_path, schema, catalogue)[schema.attributes_view_name])
    assert table["event_timestamp"].to_pylist()[0] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_offline_rejects_duplicate_ids(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue(3)
    catalogue.product_ids[2] = catalogue.product_ids[0]
    with pytest.raises(OfflineDataError, match="unique"):
        _write(tmp_path, schema, catalogue)


def test_offline_rejects_wrong_dimension(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue(3)
    catalogue.text_vectors[1] = np.zeros(schema.text_embedding_dim + 1, dtype=np.float32)
    with pytest.raises(OfflineDataError, match=r"text_embedding of product 'p001' has shape"):
        _write(tmp_path, schema, catalogue)


def test_offline_rejects_partial_nan(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue(3)
    catalogue.image_vectors[1, 0] = np.nan
    with pytest.raises(OfflineDataError, match="non-finite"):
        _write(tmp_path, schema, catalogue)


def test_offline_rejects_missing_column(tmp_path: Path, schema: FeatureSchema, helpers: Any) -> None:
    catalogue = helpers.make_catalogue(3)
    catalogue.attributes = catalogue.attributes.drop(columns=["rating"])
    with pytest.raises(OfflineDataError, match=r"\['rating'\] are missing"):
        _write(tmp_path, schema, catalogue)
