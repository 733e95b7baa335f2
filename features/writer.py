"""Write-back of embeddings computed at request time into the online store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import redis

from features.config import FeatureStoreSettings, open_feature_store
from features.embedding_bytes import pack_embedding
from features.redis_client import connect_redis, translate_redis_errors
from features.redis_layout import encode_timestamp, encode_value, feature_field, redis_key, timestamp_field
from features.schema import (
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    JOIN_KEY,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    TIMESTAMP_COLUMN,
    FeatureSchema,
)

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

# The smallest step of a stored event time: Feast keeps microseconds in Redis.
_TICK = timedelta(microseconds=1)


def next_event_times(
    product_ids: Sequence[str], previous: Sequence[datetime | None], now: datetime | None = None
) -> list[datetime]:
    """Return an event time per row that is later than the product's previous one.

    Feast's Redis store drops a write whose event time is not newer than the stored one, so each
    row gets max(now, previous + 1 µs), and a product listed twice gets increasing times. A naive
    `previous` is taken as UTC.
    """
    now = now or datetime.now(timezone.utc)
    latest: dict[str, datetime] = {}
    times = []
    for product_id, stored in zip(product_ids, previous, strict=True):
        floors = [moment for moment in (stored, latest.get(product_id)) if moment is not None]
        floors = [moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment for moment in floors]
        floor = max(floors) if floors else None
        moment = now if floor is None or now > floor else floor + _TICK
        latest[product_id] = moment
        times.append(moment)
    return times


class EmbeddingWriter:
    """Writer of one schema's embeddings, each stored with an event time newer than the stored one.

    With a Redis online store it writes Feast's Redis layout directly in one pipelined round trip
    (like Feast's `online_write_batch`, less its read of the stored event times, which the caller
    passes as `previous`). With SQLite, or with `use_feast_sdk`, it calls
    `FeatureStore.write_to_online_store`.

    NOTE: the direct Redis path overwrites whatever is stored. When two writers read the same
    `previous`, both writes land and the last one wins, even if its event time is the older one.
    """

    def __init__(
        self,
        settings: FeatureStoreSettings,
        schema: FeatureSchema,
        *,
        use_feast_sdk: bool = False,
        store: FeatureStore | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self._settings = settings
        self._schema = schema
        self._direct = settings.online_store == "redis" and not use_feast_sdk
        self._store = store
        self._client = client
        self._owns_client = False
        # Feast's SQLite store shares one sqlite3 connection between threads, so SDK writes take turns.
        self._feast_lock = threading.Lock()
        if self._direct and client is None:
            self._client, _ = connect_redis(settings)
            self._owns_client = True
        if not self._direct and store is None:
            self._store = open_feature_store(settings)

    def write_image_embeddings(
        self, product_ids: Sequence[str], vectors: np.ndarray, previous: Sequence[datetime | None]
    ) -> list[datetime]:
        """Store image embeddings (N, Di); `previous` is each product's StoredProduct.image_timestamp.

        Returns the event time written for each row.
        """
        return self._write(
            view_name=self._schema.image_view_name,
            embedding_field=IMAGE_EMBEDDING_FIELD,
            model_id_field=IMAGE_MODEL_ID_FIELD,
            model_id=self._schema.image_model_id,
            dim=self._schema.image_embedding_dim,
            product_ids=product_ids,
            vectors=vectors,
            previous=previous,
        )

    def write_text_embeddings(
        self, product_ids: Sequence[str], vectors: np.ndarray, previous: Sequence[datetime | None]
    ) -> list[datetime]:
        """Store text embeddings (N, Dt); `previous` is each product's StoredProduct.text_timestamp.

        Returns the event time written for each row.
        """
        return self._write(
            view_name=self._schema.text_view_name,
            embedding_field=TEXT_EMBEDDING_FIELD,
            model_id_field=TEXT_MODEL_ID_FIELD,
            model_id=self._schema.text_model_id,
            dim=self._schema.text_embedding_dim,
            product_ids=product_ids,
            vectors=vectors,
            previous=previous,
        )

    def _write(
        self,
        *,
        view_name: str,
        embedding_field: str,
        model_id_field: str,
        model_id: str,
        dim: int,
        product_ids: Sequence[str],
        vectors: np.ndarray,
        previous: Sequence[datetime | None],
    ) -> list[datetime]:
        vectors = np.asarray(vectors, dtype=np.float32)  # (N, D)
        if vectors.ndim != 2 or vectors.shape != (len(product_ids), dim):
            raise ValueError(
                f"{embedding_field} vectors have shape {vectors.shape}, expected ({len(product_ids)}, {dim})"
            )
        if len(previous) != len(product_ids):
            raise ValueError(f"got {len(previous)} previous event times for {len(product_ids)} products")
        if not np.isfinite(vectors).all():
            raise ValueError(f"{embedding_field} vectors contain NaN or infinite values; they were not stored")
        if not product_ids:
            return []

        times = next_event_times(product_ids, previous)
        packed = [pack_embedding(vector) for vector in vectors]
        if self._direct:
            self._write_redis(view_name, embedding_field, model_id_field, model_id, product_ids, packed, times)
        else:
            self._write_feast(view_name, embedding_field, model_id_field, model_id, product_ids, packed, times)
        logger.debug("wrote %d rows of feature view %s", len(product_ids), view_name)
        return times

    def _write_redis(
        self,
        view_name: str,
        embedding_field: str,
        model_id_field: str,
        model_id: str,
        product_ids: Sequence[str],
        packed: list[bytes],
        times: list[datetime],
    ) -> None:
        assert self._client is not None
        embedding_key = feature_field(view_name, embedding_field)
        model_id_key = feature_field(view_name, model_id_field)
        model_id_value = encode_value(model_id)
        time_key = timestamp_field(view_name)
        project = self._settings.feast_project
        address = self._settings.redis_connection_string
        with translate_redis_errors(address, f"writing {len(product_ids)} rows of {view_name}"):
            with self._client.pipeline(transaction=False) as pipe:
                for product_id, data, moment in zip(product_ids, packed, times, strict=True):
                    mapping = {
                        embedding_key: encode_value(data),
                        model_id_key: model_id_value,
                        time_key: encode_timestamp(moment),
                    }
                    # redis-py accepts bytes keys, although it annotates them as str.
                    pipe.hset(redis_key(project, product_id), mapping=mapping)  # type: ignore[arg-type]
                pipe.execute()

    def _write_feast(
        self,
        view_name: str,
        embedding_field: str,
        model_id_field: str,
        model_id: str,
        product_ids: Sequence[str],
        packed: list[bytes],
        times: list[datetime],
    ) -> None:
        import pandas as pd

        assert self._store is not None
        frame = pd.DataFrame(
            {
                JOIN_KEY: list(product_ids),
                TIMESTAMP_COLUMN: pd.Series(times, dtype="datetime64[us, UTC]"),
                embedding_field: packed,
                model_id_field: [model_id] * len(product_ids),
            }
        )
        with self._feast_lock:
            if self._settings.online_store == "redis":
                with translate_redis_errors(self._settings.redis_connection_string, f"writing {view_name}"):
                    self._store.write_to_online_store(view_name, df=frame)
            else:
                self._store.write_to_online_store(view_name, df=frame)

    def close(self) -> None:
        """Close the Redis connection pool if this writer created the client."""
        if self._owns_client and self._client is not None:
            self._client.close()
