"""Fast online reads: all feature views of a batch of products in one pipelined Redis round trip."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from features.config import FeatureStoreSettings, parse_redis_connection_string
from features.redis_client import connect_redis, translate_redis_errors
from features.redis_layout import (
    UnsupportedValueError,
    decode_timestamp,
    decode_value,
    feature_field,
    redis_key,
    timestamp_field,
)
from features.schema import (
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    FeatureSchema,
)
from features.stored import StoredProduct, ViewRow, assemble_product

logger = logging.getLogger(__name__)


class RedisFeatureReader:
    """Read products from Feast's Redis online store without the Feast SDK.

    Every view of a product lives in the same Redis hash, so a batch is one HMGET per product,
    all sent in one pipeline. The values are the ones `FeastFeatureReader` returns for the same
    store; the tests compare both.
    """

    def __init__(
        self,
        settings: FeatureStoreSettings,
        schema: FeatureSchema,
        *,
        client: redis.Redis | None = None,
    ) -> None:
        self._schema = schema
        self._project = settings.feast_project
        self._owns_client = client is None
        if client is None:
            client, _ = connect_redis(settings)
        self._client = client
        self._address = parse_redis_connection_string(settings.redis_connection_string)

        # Hash fields of one product, in order, and for each view the slice of them it owns
        # (its features, then its timestamp).
        self._fields: list[bytes] = []
        self._views: list[tuple[str, list[str], slice]] = []
        view_features = [
            (schema.attributes_view_name, schema.attribute_names),
            (schema.image_view_name, [IMAGE_EMBEDDING_FIELD, IMAGE_MODEL_ID_FIELD]),
            (schema.text_view_name, [TEXT_EMBEDDING_FIELD, TEXT_MODEL_ID_FIELD]),
        ]
        for view_name, features in view_features:
            start = len(self._fields)
            self._fields += [feature_field(view_name, feature) for feature in features]
            self._fields.append(timestamp_field(view_name))
            self._views.append((view_name, features, slice(start, len(self._fields))))

    def read(self, product_ids: Sequence[str]) -> list[StoredProduct]:
        """Return the stored features of each product, in order; unknown products have found False."""
        if not product_ids:
            return []
        with translate_redis_errors(self._address, f"reading {len(product_ids)} products"):
            with self._client.pipeline(transaction=False) as pipe:
                for product_id in product_ids:
                    # redis-py accepts bytes keys and fields, although it annotates them as str.
                    pipe.hmget(redis_key(self._project, product_id), self._fields)  # type: ignore[arg-type]
                replies = pipe.execute()
        return [
            self._assemble(product_id, reply) for product_id, reply in zip(product_ids, replies, strict=True)
        ]

    def _assemble(self, product_id: str, reply: list[bytes | None]) -> StoredProduct:
        rows: dict[str, ViewRow | None] = {}
        for view_name, features, fields in self._views:
            stored = reply[fields]
            stored_timestamp = stored[-1]
            # Feast writes a view's timestamp with its values, so no timestamp means no row.
            if stored_timestamp is None:
                rows[view_name] = None
                continue
            values = {}
            for feature, data in zip(features, stored[:-1], strict=True):
                try:
                    values[feature] = decode_value(data)
                except UnsupportedValueError as error:
                    logger.warning("ignoring feature %s:%s of product %s: %s", view_name, feature, product_id, error)
                    values[feature] = None
            rows[view_name] = ViewRow(timestamp=decode_timestamp(stored_timestamp), values=values)
        return assemble_product(self._schema, product_id, rows)

    def close(self) -> None:
        """Close the connection pool if this reader created the client."""
        if self._owns_client:
            self._client.close()
