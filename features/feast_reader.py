"""Reference online reads through the Feast SDK (`FeatureStore.get_online_features`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import timezone
from typing import TYPE_CHECKING, Any

from features.config import FeatureStoreSettings, open_feature_store
from features.errors import FeatureSchemaError
from features.redis_client import translate_redis_errors
from features.schema import (
    FEATURE_SERVICE_NAME,
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    JOIN_KEY,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    FeatureSchema,
)
from features.stored import StoredProduct, ViewRow, assemble_product

if TYPE_CHECKING:
    from feast import FeatureStore


def _python_value(value: Any) -> Any:
    """Return the Python value of a feast.types.Value; None when it is empty or null."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(value, kind)


class FeastFeatureReader:
    """Read products with `FeatureStore.get_online_features` and the `product_quality` service.

    Works with every online store Feast supports, here SQLite and Redis. A view has a row for a
    product when the row's event time is not zero. The field status cannot tell, because for an
    unknown entity Feast 0.67's Redis store reports every field PRESENT with empty values (and a
    zero event time). The SQLite store keeps event times in whole seconds, so its timestamps have
    no sub-second part.
    """

    def __init__(
        self,
        settings: FeatureStoreSettings,
        schema: FeatureSchema,
        *,
        store: FeatureStore | None = None,
    ) -> None:
        from feast.errors import FeatureServiceNotFoundException

        self._settings = settings
        self._schema = schema
        self._store = store if store is not None else open_feature_store(settings)
        # Feast's SQLite store shares one sqlite3 connection between threads, so reads take turns.
        self._lock = threading.Lock()
        with self._unavailable_errors("loading the feature service"):
            try:
                self._service = self._store.get_feature_service(FEATURE_SERVICE_NAME)
            except FeatureServiceNotFoundException:
                raise FeatureSchemaError(
                    f"feature service {FEATURE_SERVICE_NAME!r} is not registered in Feast project "
                    f"{settings.feast_project!r} (registry {settings.registry_path}); apply the "
                    "definitions first with `python -m features.materialize`"
                ) from None

        served = sorted(projection.name for projection in self._service.feature_view_projections)
        if served != sorted(schema.view_names):
            raise FeatureSchemaError(
                f"feature service {FEATURE_SERVICE_NAME!r} of project {settings.feast_project!r} serves "
                f"views {served}, but the model expects {sorted(schema.view_names)}; apply the "
                "definitions of this model's feature schema"
            )

        self._view_features = [
            (schema.attributes_view_name, schema.attribute_names),
            (schema.image_view_name, [IMAGE_EMBEDDING_FIELD, IMAGE_MODEL_ID_FIELD]),
            (schema.text_view_name, [TEXT_EMBEDDING_FIELD, TEXT_MODEL_ID_FIELD]),
        ]

    @contextlib.contextmanager
    def _unavailable_errors(self, action: str) -> Iterator[None]:
        if self._settings.online_store == "redis":
            with translate_redis_errors(self._settings.redis_connection_string, action):
                yield
        else:
            yield

    def read(self, product_ids: Sequence[str]) -> list[StoredProduct]:
        """Return the stored features of each product, in order; unknown products have found False."""
        if not product_ids:
            return []
        with self._lock, self._unavailable_errors(f"reading {len(product_ids)} products"):
            response = self._store.get_online_features(
                features=self._service,
                entity_rows=[{JOIN_KEY: product_id} for product_id in product_ids],
                full_feature_names=True,
            )
        # The response proto keeps event times to the nanosecond; OnlineResponse.to_dict() would
        # round them down to whole seconds.
        names = list(response.proto.metadata.feature_names.val)
        columns = dict(zip(names, response.proto.results, strict=True))

        products = []
        for index, product_id in enumerate(product_ids):
            rows: dict[str, ViewRow | None] = {}
            for view_name, features in self._view_features:
                vectors = [columns[f"{view_name}__{feature}"] for feature in features]
                timestamp = vectors[0].event_timestamps[index]
                if timestamp.seconds == 0 and timestamp.nanos == 0:
                    rows[view_name] = None
                    continue
                values = {
                    feature: _python_value(vector.values[index])
                    for feature, vector in zip(features, vectors, strict=True)
                }
                rows[view_name] = ViewRow(timestamp=timestamp.ToDatetime(tzinfo=timezone.utc), values=values)
            products.append(assemble_product(self._schema, product_id, rows))
        return products

    def close(self) -> None:
        """Release nothing: the FeatureStore has no close method in Feast 0.67."""
