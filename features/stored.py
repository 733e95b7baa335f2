"""The stored features of one product, assembled the same way by every reader."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from features.embedding_bytes import unpack_embedding
from features.schema import (
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    FeatureSchema,
)

logger = logging.getLogger(__name__)


@dataclass
class StoredProduct:
    """The online features of one product; a missing or unusable part is None."""

    product_id: str
    attributes: dict[str, float | str | None] | None
    """Attribute values by name; None when no attribute row is stored. A missing value is None."""
    image_embedding: np.ndarray | None
    """Image embedding (Di,) float32; None when missing, of another model id, or of the wrong size."""
    text_embedding: np.ndarray | None
    """Text embedding (Dt,) float32; None under the same conditions as image_embedding."""
    image_timestamp: datetime | None
    """Event time (UTC) of the stored image view row, even when its vector was rejected."""
    text_timestamp: datetime | None
    """Event time (UTC) of the stored text view row, even when its vector was rejected."""

    @property
    def found(self) -> bool:
        """Whether any attribute or embedding of the product is stored."""
        return (
            self.attributes is not None
            or self.image_embedding is not None
            or self.text_embedding is not None
        )


@dataclass(frozen=True)
class ViewRow:
    """A stored row of one feature view: its event time and values by feature name."""

    timestamp: datetime
    values: Mapping[str, Any]


def _attribute_value(value: Any) -> float | str | None:
    if value is None or isinstance(value, str):
        return value
    number = float(value)
    return None if math.isnan(number) else number


def _embedding(
    product_id: str,
    row: ViewRow | None,
    *,
    embedding_field: str,
    model_id_field: str,
    expected_model_id: str,
    dim: int,
) -> np.ndarray | None:
    """Return the row's vector (dim,) when it exists and was made by `expected_model_id`."""
    if row is None:
        return None
    data = row.values.get(embedding_field)
    if data is None:
        return None
    stored_model_id = row.values.get(model_id_field)
    if stored_model_id != expected_model_id:
        logger.debug(
            "ignoring %s of product %s: stored model id %r differs from %r",
            embedding_field,
            product_id,
            stored_model_id,
            expected_model_id,
        )
        return None
    try:
        return unpack_embedding(data, dim)
    except ValueError as error:
        logger.warning("ignoring %s of product %s: %s", embedding_field, product_id, error)
        return None


def assemble_product(
    schema: FeatureSchema, product_id: str, rows: Mapping[str, ViewRow | None]
) -> StoredProduct:
    """Build a StoredProduct from the stored row of each view (keyed by view name; None: no row)."""
    attribute_row = rows.get(schema.attributes_view_name)
    attributes = None
    if attribute_row is not None:
        attributes = {
            name: _attribute_value(attribute_row.values.get(name)) for name in schema.attribute_names
        }

    image_row = rows.get(schema.image_view_name)
    text_row = rows.get(schema.text_view_name)
    return StoredProduct(
        product_id=product_id,
        attributes=attributes,
        image_embedding=_embedding(
            product_id,
            image_row,
            embedding_field=IMAGE_EMBEDDING_FIELD,
            model_id_field=IMAGE_MODEL_ID_FIELD,
            expected_model_id=schema.image_model_id,
            dim=schema.image_embedding_dim,
        ),
        text_embedding=_embedding(
            product_id,
            text_row,
            embedding_field=TEXT_EMBEDDING_FIELD,
            model_id_field=TEXT_MODEL_ID_FIELD,
            expected_model_id=schema.text_model_id,
            dim=schema.text_embedding_dim,
        ),
        image_timestamp=image_row.timestamp if image_row is not None else None,
        text_timestamp=text_row.timestamp if text_row is not None else None,
    )
