"""End-to-end tests of the feature store on the real Redis: offline files, apply, materialize,
both readers and the writer, each test in a Feast project of its own."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from features.config import FeatureStoreSettings, open_feature_store
from features.errors import OnlineStoreUnavailableError
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.online import (
    EmbeddingWriter,
    FeastFeatureReader,
    RedisFeatureReader,
    StoredProduct,
    open_reader,
)
from features.redis_layout import feature_field, redis_key, timestamp_field
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


def product_key(settings: FeatureStoreSettings, product_id: str) -> bytes:
    return redis_key(settings.feast_project, product_id)


def assert_same_product(left: StoredProduct, right: StoredProduct) -> None:
    assert left.product_id == right.product_id
    assert left.attributes == right.attributes
    for name in ("image_embedding", "text_embedding"):
        left_vector, right_vector = getattr(left, name), getattr(right, name)
        assert (left_vector is None) == (right_vector is None), name
        if left_vector is not None:
            np.testing.assert_array_equal(left_vector, right_vector)
    assert left.image_timestamp == right.image_timestamp
    assert left.text_timestamp == right.text_timestamp


def assert_matches_catalogue(product: StoredProduct, catalogue: Any, index: int) -> None:
    """Check a product read back against the offline values it was materialized from."""
    row = catalogue.attributes.iloc[index]
    assert product.found
    assert product.attributes is not None
    price = None if pd.isna(row["price"]) else float(row["price"])
    assert product.attributes["price"] == price
    assert product.attributes["rating"] == float(row["rating"])
    assert product.attributes["brand"] == row["brand"]

    image = catalogue.image_vectors[index]
    if np.isnan(image).all():
        assert product.image_embedding is None
        assert product.image_timestamp is None
    else:
        np.testing.assert_array_equal(product.image_embedding, image)
        assert product.image_timestamp == catalogue.event_time

    text = catalogue.text_vectors[index]
    if text is None:
        assert product.text_embedding is None
        assert product.text_timestamp is None
    else:
        np.testing.assert_array_equal(product.text_embedding, text)
        assert product.text_timestamp == catalogue.event_time


@dataclass
class LoadedStore:
    settings: FeatureStoreSettings
    schema: FeatureSchema
    catalogue: Any


@pytest.fixture(scope="module")
def shared_store(
    helpers: Any, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadedStore]:
    """A materialized store that the tests of this module only read."""
    project = helpers.new_project_name()
    settings = helpers.make_redis_settings(project, tmp_path_factory.mktemp("shared_store"))
    schema = helpers.make_schema()
    catalogue = helpers.make_catalogue(64)
    write_catalogue(settings, schema, catalogue)
    apply_and_materialize(settings, schema)
    yield LoadedStore(settings, schema, catalogue)
    helpers.delete_project_keys(redis_client, project)


@pytest.fixture
def store(redis_settings: FeatureStoreSettings, schema: FeatureSchema, catalogue: Any) -> LoadedStore:
    """A materialized store that the test may change."""
    write_catalogue(redis_settings, schema, catalogue)
    apply_and_materialize(redis_settings, schema)
    return LoadedStore(redis_settings, schema, catalogue)


class CountingRedis(redis.Redis):
    """A real redis-py client that counts pipelines and single commands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipelines = 0
        self.commands = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return super().pipeline(*args, **kwargs)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.commands += 1
        return super().execute_command(*args, **kwargs)


# Reading -------------------------------------------------------------------------------------


def test_readers_agree_after_materialize(shared_store: LoadedStore) -> None:
    ids = shared_store.catalogue.product_ids + ["unknown"]
    fast = RedisFeatureReader(shared_store.settings, shared_store.schema).read(ids)
    reference = FeastFeatureReader(shared_store.settings, shared_store.schema).read(ids)
    assert len(fast) == len(reference) == len(ids)
    for left, right in zip(fast, reference, strict=True):
        assert_same_product(left, right)


def test_fast_reader_returns_offline_values(shared_store: LoadedStore) -> None:
    catalogue = shared_store.catalogue
    products = RedisFeatureReader(shared_store.settings, shared_store.schema).read(catalogue.product_ids)
    for index, product in enumerate(products):
        assert_matches_catalogue(product, catalogue, index)


def test_reader_unknown_product(shared_store: LoadedStore) -> None:
    ids = ["unknown", shared_store.catalogue.product_ids[1]]
    for reader in (
        RedisFeatureReader(shared_store.settings, shared_store.schema),
        FeastFeatureReader(shared_store.settings, shared_store.schema),
    ):
        missing, known = reader.read(ids)
        assert missing.product_id == "unknown"
        assert not missing.found
        assert missing.attributes is None
        assert missing.image_embedding is None
        assert missing.text_embedding is None
        assert missing.image_timestamp is None
        assert missing.text_timestamp is None
        assert known.found


def test_fast_reader_one_round_trip(shared_store: LoadedStore) -> None:
    host, _, port = shared_store.settings.redis_connection_string.rpartition(":")
    client = CountingRedis(host=host, port=int(port))
    reader = RedisFeatureReader(shared_store.settings, shared_store.schema, client=client)
    products = reader.read(shared_store.catalogue.product_ids)
    assert len(products) == 64
    assert client.pipelines == 1
    assert client.commands == 0
    client.close()


def test_fast_reader_empty_batch(shared_store: LoadedStore) -> None:
    assert RedisFeatureReader(shared_store.settings, shared_store.schema).read([]) == []


def test_open_reader_picks_redis(shared_store: LoadedStore) -> None:
    assert isinstance(open_reader(shared_store.settings, shared_store.schema), RedisFeatureReader)


def test_reader_ignores_other_model_id(store: LoadedStore) -> None:
    # A row in this view whose model id column names another encoder, written through Feast.
    feast_store = open_feature_store(store.settings)
    product_id = store.catalogue.product_ids[1]
    moment = datetime.now(timezone.utc)
    frame = pd.DataFrame(
        {
            "product_id": [product_id],
            "event_timestamp": pd.Series([moment], dtype="datetime64[us, UTC]"),
            "image_embedding": [np.ones(store.schema.image_embedding_dim, dtype="<f4").tobytes()],
            "image_model_id": ["some_other_encoder@ffffffff"],
        }
    )
    feast_store.write_to_online_store(store.schema.image_view_name, df=frame)

    for reader in (RedisFeatureReader(store.settings, store.schema), FeastFeatureReader(store.settings, store.schema)):
        (product,) = reader.read([product_id])
        assert product.image_embedding is None
        assert product.image_timestamp == moment
        assert product.text_embedding is not None
        assert product.found


# Writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_feast_sdk", [True, False], ids=["feast_sdk", "direct"])
def test_writer_readers_agree(store: LoadedStore, use_feast_sdk: bool) -> None:
    # Feast SDK write read by the fast path, and a direct Redis write read by the Feast SDK.
    schema = store.schema
    ids = store.catalogue.product_ids[:6] + ["new_product"]
    before = RedisFeatureReader(store.settings, schema).read(ids)
    vectors = np.random.default_rng(1).standard_normal((len(ids), schema.image_embedding_dim)).astype(np.float32)
    writer = EmbeddingWriter(store.settings, schema, use_feast_sdk=use_feast_sdk)
    times = writer.write_image_embeddings(ids, vectors, [product.image_timestamp for product in before])

    fast = RedisFeatureReader(store.settings, schema).read(ids)
    reference = FeastFeatureReader(store.settings, schema).read(ids)
    for index, (left, right) in enumerate(zip(fast, reference, strict=True)):
        assert_same_product(left, right)
        np.testing.assert_array_equal(left.image_embedding, vectors[index])
        assert left.image_timestamp == times[index]
        assert left.text_timestamp == before[index].text_timestamp
    assert fast[-1].attributes is None
    assert fast[-1].found


@pytest.mark.parametrize("use_feast_sdk", [True, False], ids=["feast_sdk", "direct"])
def test_writer_quick_successive_writes(store: LoadedStore, use_feast_sdk: bool) -> None:
    schema = store.schema
    product_id = store.catalogue.product_ids[2]
    reader = RedisFeatureReader(store.settings, schema)
    writer = EmbeddingWriter(store.settings, schema, use_feast_sdk=use_feast_sdk)
    first_vector = np.full((1, schema.text_embedding_dim), 1.0, dtype=np.float32)
    second_vector = np.full((1, schema.text_embedding_dim), 2.0, dtype=np.float32)

    (stored,) = reader.read([product_id])
    (first_time,) = writer.write_text_embeddings([product_id], first_vector, [stored.text_timestamp])
    (after_first,) = reader.read([product_id])
    (second_time,) = writer.write_text_embeddings([product_id], second_vector, [after_first.text_timestamp])
    (after_second,) = reader.read([product_id])

    assert stored.text_timestamp is not None
    assert first_time > stored.text_timestamp
    assert second_time > first_time
    np.testing.assert_array_equal(after_first.text_embedding, first_vector[0])
    np.testing.assert_array_equal(after_second.text_embedding, second_vector[0])
    assert after_second.text_timestamp == second_time


def test_writer_after_future_event_time(redis_settings: FeatureStoreSettings, schema: FeatureSchema, helpers: Any) -> None:
    # An offline row dated ahead of the clock: Feast would drop a write-back stamped "now".
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    catalogue = helpers.make_catalogue(3, event_time=future)
    write_catalogue(redis_settings, schema, catalogue)
    apply_and_materialize(redis_settings, schema, end_date=future + timedelta(minutes=1))
    reader = RedisFeatureReader(redis_settings, schema)
    product_id = catalogue.product_ids[1]
    (stored,) = reader.read([product_id])
    assert stored.image_timestamp == future

    vector = np.full((1, schema.image_embedding_dim), 3.0, dtype=np.float32)
    writer = EmbeddingWriter(redis_settings, schema, use_feast_sdk=True)
    (written,) = writer.write_image_embeddings([product_id], vector, [stored.image_timestamp])
    (after,) = reader.read([product_id])
    assert written == future + timedelta(microseconds=1)
    np.testing.assert_array_equal(after.image_embedding, vector[0])


def test_writer_rejects_wrong_shape(store: LoadedStore) -> None:
    writer = EmbeddingWriter(store.settings, store.schema)
    with pytest.raises(ValueError, match=r"expected \(1, 16\)"):
        writer.write_image_embeddings(["p001"], np.zeros((1, 15), dtype=np.float32), [None])


# Materializing -------------------------------------------------------------------------------


def test_materialize_twice_changes_nothing(store: LoadedStore, redis_client: redis.Redis, helpers: Any) -> None:
    project = store.settings.feast_project
    before = helpers.snapshot_project(redis_client, project)
    apply_and_materialize(store.settings, store.schema)
    after_full = helpers.snapshot_project(redis_client, project)
    apply_and_materialize(store.settings, store.schema, incremental=True)
    after_incremental = helpers.snapshot_project(redis_client, project)
    assert len(before) == len(store.catalogue.product_ids)
    assert after_full == before
    assert after_incremental == before


def test_incremental_loads_only_new_rows(
    redis_settings: FeatureStoreSettings, schema: FeatureSchema, redis_client: redis.Redis, helpers: Any
) -> None:
    first_end = datetime.now(timezone.utc)
    old = helpers.make_catalogue(4, prefix="old", event_time=first_end - timedelta(hours=1))
    write_catalogue(redis_settings, schema, old)
    apply_and_materialize(redis_settings, schema, end_date=first_end)

    # Forget one old product online; an incremental run must not load its old row again.
    reader = RedisFeatureReader(redis_settings, schema)
    dropped = old.product_ids[1]
    redis_client.delete(product_key(redis_settings, dropped))
    new = helpers.make_catalogue(3, prefix="new", seed=1, event_time=first_end + timedelta(seconds=1))
    write_catalogue(redis_settings, schema, new, append=True)
    apply_and_materialize(redis_settings, schema, incremental=True, end_date=first_end + timedelta(seconds=2))

    products = {product.product_id: product for product in reader.read(old.product_ids + new.product_ids)}
    assert not products[dropped].found
    for index, product_id in enumerate(new.product_ids):
        assert_matches_catalogue(products[product_id], new, index)

    # A full run loads it again.
    apply_and_materialize(redis_settings, schema, end_date=first_end + timedelta(seconds=2))
    (restored,) = reader.read([dropped])
    assert_matches_catalogue(restored, old, 1)


def test_new_encoder_gets_new_view(store: LoadedStore, redis_client: redis.Redis, helpers: Any) -> None:
    old_schema = store.schema
    new_schema = helpers.make_schema("efficientnet_lite0.imagenet.224@99999999")
    assert new_schema.image_view_name != old_schema.image_view_name
    product_id = store.catalogue.product_ids[1]

    new_catalogue = helpers.make_catalogue(12, seed=5)
    write_catalogue(store.settings, new_schema, new_catalogue)
    apply_and_materialize(store.settings, new_schema)

    feast_store = open_feature_store(store.settings)
    view_names = {view.name for view in feast_store.list_feature_views()}
    assert new_schema.image_view_name in view_names
    assert old_schema.image_view_name not in view_names
    assert feast_store.get_feature_view(new_schema.image_view_name).tags["model_id"] == new_schema.image_model_id

    # redis-py annotates keys as str and includes the asyncio client's awaitable results.
    stored_fields: list[bytes] = redis_client.hkeys(product_key(store.settings, product_id))  # type: ignore
    assert timestamp_field(old_schema.image_view_name) not in stored_fields
    assert feature_field(old_schema.image_view_name, "image_embedding") not in stored_fields

    (product,) = RedisFeatureReader(store.settings, new_schema).read([product_id])
    np.testing.assert_array_equal(product.image_embedding, new_catalogue.image_vectors[1])


# Failures ------------------------------------------------------------------------------------


def test_unreachable_redis(shared_store: LoadedStore, helpers: Any) -> None:
    address = f"127.0.0.1:{helpers.closed_port()}"
    settings = shared_store.settings.model_copy(update={"redis_connection_string": address})
    schema = shared_store.schema

    with pytest.raises(OnlineStoreUnavailableError, match=f"Redis online store at {address} is unavailable"):
        RedisFeatureReader(settings, schema).read(["p001"])
    with pytest.raises(OnlineStoreUnavailableError, match=address):
        EmbeddingWriter(settings, schema).write_text_embeddings(
            ["p001"], np.zeros((1, schema.text_embedding_dim), dtype=np.float32), [None]
        )
    with pytest.raises(OnlineStoreUnavailableError, match=address):
        FeastFeatureReader(settings, schema).read(["p001"])


def test_redis_timeout(shared_store: LoadedStore) -> None:
    # A listening socket that never replies: the connection opens, but no reply arrives.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = shared_store.settings.model_copy(
            update={"redis_connection_string": address, "redis_timeout_s": 0.2}
        )
        started = time.monotonic()
        with pytest.raises(OnlineStoreUnavailableError, match=f"at {address} timed out"):
            RedisFeatureReader(settings, shared_store.schema).read(["p001"])
        assert time.monotonic() - started < 5


def test_reader_reconnects_after_restart(private_redis: Any, helpers: Any, tmp_path: Path, schema: FeatureSchema) -> None:
    settings = helpers.make_redis_settings(helpers.new_project_name(), tmp_path / "store", private_redis.address)
    reader = RedisFeatureReader(settings, schema)
    writer = EmbeddingWriter(settings, schema)
    vector = np.ones((1, schema.text_embedding_dim), dtype=np.float32)
    writer.write_text_embeddings(["p1"], vector, [None])
    assert reader.read(["p1"])[0].text_embedding is not None

    # A restart between two reads: the pool finds its connection closed and opens a new one.
    private_redis.stop()
    private_redis.start()
    assert not reader.read(["p1"])[0].found

    private_redis.stop()
    with pytest.raises(OnlineStoreUnavailableError, match=private_redis.address):
        reader.read(["p1"])

    # The same reader and writer work again once Redis is back (it restarts empty).
    private_redis.start()
    assert not reader.read(["p1"])[0].found
    writer.write_text_embeddings(["p1"], vector, [None])
    np.testing.assert_array_equal(reader.read(["p1"])[0].text_embedding, vector[0])
