"""End-to-end tests of the feature store with Feast's embedded SQLite online store."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureStoreSettings
from features.errors import FeatureSchemaError, OfflineDataError
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.online import EmbeddingWriter, FeastFeatureReader, open_reader
from features.schema import FeatureSchema


def write_catalogue(settings: FeatureStoreSettings, schema: FeatureSchema, catalogue: Any, **kwargs: Any) -> None:
    write_offline_features(
        settings.feature_data_dir,
        schema,
        catalogue.product_ids,
        catalogue.attributes,
        catalogue.image_vectors,
        catalogue.text_vectors,
        catalogue.event_time,
        **kwargs,
    )


def whole_second(moment: datetime) -> datetime:
    # Feast 0.67's SQLite store keeps event times as whole Unix seconds.
    return moment.replace(microsecond=0)


def sqlite_rows(settings: FeatureStoreSettings) -> list[tuple[Any, ...]]:
    """Return every row of every table of the SQLite online store, sorted."""
    with sqlite3.connect(settings.sqlite_path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = []
        for table in sorted(tables):
            rows += [(table, *row) for row in connection.execute(f'SELECT * FROM "{table}"')]
    return sorted(rows, key=repr)


@pytest.fixture
def loaded(sqlite_settings: FeatureStoreSettings, schema: FeatureSchema, catalogue: Any) -> FeatureStoreSettings:
    write_catalogue(sqlite_settings, schema, catalogue)
    apply_and_materialize(sqlite_settings, schema)
    return sqlite_settings


def test_sqlite_read_after_materialize(loaded: FeatureStoreSettings, schema: FeatureSchema, catalogue: Any) -> None:
    reader = open_reader(loaded, schema)
    assert isinstance(reader, FeastFeatureReader)
    products = reader.read(catalogue.product_ids + ["unknown"])

    for index, product in enumerate(products[:-1]):
        row = catalogue.attributes.iloc[index]
        assert product.attributes == {
            "price": None if pd.isna(row["price"]) else float(row["price"]),
            "rating": float(row["rating"]),
            "brand": row["brand"],
        }
        image = catalogue.image_vectors[index]
        if np.isnan(image).all():
            assert product.image_embedding is None
            assert product.image_timestamp is None
        else:
            np.testing.assert_array_equal(product.image_embedding, image)
            assert product.image_timestamp == whole_second(catalogue.event_time)
        text = catalogue.text_vectors[index]
        if text is None:
            assert product.text_embedding is None
        else:
            np.testing.assert_array_equal(product.text_embedding, text)
    assert not products[-1].found


def test_sqlite_write_back_successive(loaded: FeatureStoreSettings, schema: FeatureSchema, catalogue: Any) -> None:
    reader = FeastFeatureReader(loaded, schema)
    writer = EmbeddingWriter(loaded, schema)
    product_id = catalogue.product_ids[0]  # it has no image offline
    first = np.full((1, schema.image_embedding_dim), 1.0, dtype=np.float32)
    second = np.full((1, schema.image_embedding_dim), 2.0, dtype=np.float32)

    (stored,) = reader.read([product_id])
    assert stored.image_embedding is None
    (first_time,) = writer.write_image_embeddings([product_id], first, [stored.image_timestamp])
    (after_first,) = reader.read([product_id])
    (second_time,) = writer.write_image_embeddings([product_id], second, [after_first.image_timestamp])
    (after_second,) = reader.read([product_id])

    assert second_time > first_time
    np.testing.assert_array_equal(after_first.image_embedding, first[0])
    np.testing.assert_array_equal(after_second.image_embedding, second[0])
    assert after_second.image_timestamp == whole_second(second_time)


def test_sqlite_materialize_twice(loaded: FeatureStoreSettings, schema: FeatureSchema) -> None:
    before = sqlite_rows(loaded)
    apply_and_materialize(loaded, schema)
    apply_and_materialize(loaded, schema, incremental=True)
    assert len(before) > 0
    assert sqlite_rows(loaded) == before


def test_sqlite_incremental_adds_new_rows(
    sqlite_settings: FeatureStoreSettings, schema: FeatureSchema, helpers: Any
) -> None:
    first_end = datetime.now(timezone.utc)
    old = helpers.make_catalogue(3, prefix="old", event_time=first_end - timedelta(hours=1))
    write_catalogue(sqlite_settings, schema, old)
    apply_and_materialize(sqlite_settings, schema, incremental=True, end_date=first_end)
    new = helpers.make_catalogue(2, prefix="new", seed=3, event_time=first_end + timedelta(seconds=1))
    write_catalogue(sqlite_settings, schema, new, append=True)
    apply_and_materialize(sqlite_settings, schema, incremental=True, end_date=first_end + timedelta(seconds=2))

    products = FeastFeatureReader(sqlite_settings, schema).read(old.product_ids + new.product_ids)
    assert all(product.found for product in products)
    np.testing.assert_array_equal(products[-1].text_embedding, new.text_vectors[1])


def test_feast_reader_before_apply(sqlite_settings: FeatureStoreSettings, schema: FeatureSchema) -> None:
    with pytest.raises(FeatureSchemaError, match="not registered.*python -m features.materialize"):
        FeastFeatureReader(sqlite_settings, schema)


def test_feast_reader_other_schema(loaded: FeatureStoreSettings, helpers: Any) -> None:
    other = helpers.make_schema("resnet18.imagenet.224@77777777")
    with pytest.raises(FeatureSchemaError, match="serves views"):
        FeastFeatureReader(loaded, other)


def test_materialize_without_sources(sqlite_settings: FeatureStoreSettings, schema: FeatureSchema) -> None:
    with pytest.raises(OfflineDataError, match="do not exist"):
        apply_and_materialize(sqlite_settings, schema)
