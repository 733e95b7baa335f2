"""Online feature access for serving: readers of stored products and the embedding writer.

    open_reader(settings, schema)
     +-- RedisFeatureReader  online_store "redis": one pipelined Redis round trip, no Feast import
     +-- FeastFeatureReader  online_store "sqlite" (or any store): FeatureStore.get_online_features
    EmbeddingWriter          write-back with event times newer than the stored ones

Redis failures raise features.errors.OnlineStoreUnavailableError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from features.config import FeatureStoreSettings
from features.feast_reader import FeastFeatureReader
from features.redis_reader import RedisFeatureReader
from features.schema import FeatureSchema
from features.stored import StoredProduct
from features.writer import EmbeddingWriter

__all__ = [
    "EmbeddingWriter",
    "FeastFeatureReader",
    "OnlineFeatureReader",
    "RedisFeatureReader",
    "StoredProduct",
    "open_reader",
]


class OnlineFeatureReader(Protocol):
    """Reads the stored features of products from the online store."""

    def read(self, product_ids: Sequence[str]) -> list[StoredProduct]:
        """Return one StoredProduct per id, in order; an unknown product has found False."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def open_reader(settings: FeatureStoreSettings, schema: FeatureSchema) -> OnlineFeatureReader:
    """Open the fastest reader for settings.online_store: Redis direct, else the Feast SDK."""
    if settings.online_store == "redis":
        return RedisFeatureReader(settings, schema)
    return FeastFeatureReader(settings, schema)
