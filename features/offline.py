"""Write the parquet files that are the offline sources of the feature views."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.embedding_bytes import pack_embedding
from features.errors import OfflineDataError
from features.schema import (
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    JOIN_KEY,
    SCHEMA_FILE_NAME,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    TIMESTAMP_COLUMN,
    FeatureSchema,
)

logger = logging.getLogger(__name__)

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

# Vectors of one modality: an array (N, D) where an all-NaN row is a missing embedding, or a
# sequence of N vectors (D,) or None.
Vectors = np.ndarray | Sequence[np.ndarray | None]


def _utc_timestamps(event_time: datetime | Sequence[datetime], count: int) -> pd.Series:
    """Return `count` UTC timestamps; a naive datetime is taken as UTC."""
    values = [event_time] * count if isinstance(event_time, datetime) else list(event_time)
    if len(values) != count:
        raise OfflineDataError(f"got {len(values)} event times for {count} products; pass one or one per product")
    converted = [
        value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        for value in values
    ]
    return pd.Series(pd.to_datetime(converted, utc=True), dtype="datetime64[us, UTC]")


def _attribute_table(
    schema: FeatureSchema, product_ids: list[str], attributes: pd.DataFrame, timestamps: pd.Series
) -> pa.Table:
    missing = [name for name in schema.attribute_names if name not in attributes.columns]
    if missing:
        raise OfflineDataError(
            f"attribute columns {missing} are missing from the attributes frame "
            f"(columns: {list(attributes.columns)})"
        )
    if len(attributes) != len(product_ids):
        raise OfflineDataError(
            f"attributes frame has {len(attributes)} rows for {len(product_ids)} products; "
            "pass one row per product, in product_ids order"
        )

    columns: dict[str, pa.Array] = {
        JOIN_KEY: pa.array(product_ids, pa.string()),
        TIMESTAMP_COLUMN: pa.array(timestamps, TIMESTAMP_TYPE),
    }
    for name in schema.numeric_attributes:
        try:
            values = pd.to_numeric(attributes[name].reset_index(drop=True), errors="raise").astype("float64")
        except (TypeError, ValueError) as error:
            raise OfflineDataError(f"numeric attribute {name!r} has a non-numeric value: {error}") from None
        # NaN is stored as null, so that both online stores return None for a missing number.
        columns[name] = pa.array(values.to_numpy(), pa.float64(), mask=values.isna().to_numpy())
    for name in schema.categorical_attributes:
        values = attributes[name].reset_index(drop=True)
        strings = [None if pd.isna(value) else str(value) for value in values]
        columns[name] = pa.array(strings, pa.string())
    return pa.table(columns)


def _embedding_table(
    *,
    product_ids: list[str],
    vectors: Vectors,
    dim: int,
    model_id: str,
    embedding_field: str,
    model_id_field: str,
    timestamps: pd.Series,
) -> pa.Table:
    rows = list(vectors) if not isinstance(vectors, np.ndarray) else [row for row in vectors]
    if isinstance(vectors, np.ndarray) and (vectors.ndim != 2 or vectors.shape[1] != dim):
        raise OfflineDataError(f"{embedding_field} vectors have shape {vectors.shape}, expected (N, {dim})")
    if len(rows) != len(product_ids):
        raise OfflineDataError(
            f"got {len(rows)} {embedding_field} vectors for {len(product_ids)} products; "
            "pass one per product, with None or a NaN row where it is missing"
        )

    kept_ids: list[str] = []
    packed: list[bytes] = []
    kept_times: list[pd.Timestamp] = []
    for product_id, row, timestamp in zip(product_ids, rows, timestamps, strict=True):
        if row is None:
            continue
        vector = np.asarray(row, dtype=np.float32)  # (D,)
        if vector.shape != (dim,):
            raise OfflineDataError(
                f"{embedding_field} of product {product_id!r} has shape {vector.shape}, expected ({dim},)"
            )
        if np.isnan(vector).all():
            continue
        if not np.isfinite(vector).all():
            raise OfflineDataError(
                f"{embedding_field} of product {product_id!r} has non-finite values; pass a finite "
                "vector, or an all-NaN row or None when the embedding is missing"
            )
        kept_ids.append(product_id)
        packed.append(pack_embedding(vector))
        kept_times.append(timestamp)

    return pa.table(
        {
            JOIN_KEY: pa.array(kept_ids, pa.string()),
            TIMESTAMP_COLUMN: pa.array(kept_times, TIMESTAMP_TYPE),
            embedding_field: pa.array(packed, pa.binary()),
            model_id_field: pa.array([model_id] * len(kept_ids), pa.string()),
        }
    )


def _merge_with_existing(path: Path, table: pa.Table) -> pa.Table:
    """Append `table` to the rows in `path`; a new row replaces an old one with the same id and time."""
    existing = pq.read_table(path)
    if existing.schema != table.schema:
        raise OfflineDataError(
            f"cannot append to {path}: its columns {existing.schema.names} differ from the new rows' "
            f"{table.schema.names}; write without append to replace the file"
        )
    new_keys = set(zip(table[JOIN_KEY].to_pylist(), table[TIMESTAMP_COLUMN].to_pylist(), strict=True))
    old_keys = zip(existing[JOIN_KEY].to_pylist(), existing[TIMESTAMP_COLUMN].to_pylist(), strict=True)
    keep = pa.array([key not in new_keys for key in old_keys], pa.bool_())
    return pa.concat_tables([existing.filter(keep), table])


def write_offline_features(
    data_dir: Path,
    schema: FeatureSchema,
    product_ids: Sequence[str],
    attributes: pd.DataFrame,
    image_vectors: Vectors,
    text_vectors: Vectors,
    event_time: datetime | Sequence[datetime],
    *,
    append: bool = False,
) -> dict[str, Path]:
    """Write one parquet source per feature view and the schema JSON into `data_dir`.

    `attributes` has one row per product, in `product_ids` order, with the schema's attribute
    columns. `image_vectors` (N, Di) and `text_vectors` (N, Dt) hold an all-NaN row or None where a
    product has no embedding, and such a product gets no row in that view. With `append`, the rows
    are added to the existing files (for incremental materialization) instead of replacing them.
    Returns the parquet path of each view, keyed by view name.
    """
    data_dir = Path(data_dir)
    ids = [str(product_id) for product_id in product_ids]
    if len(set(ids)) != len(ids):
        duplicates = sorted({product_id for product_id in ids if ids.count(product_id) > 1})[:5]
        raise OfflineDataError(f"product ids must be unique, found duplicates such as {duplicates}")
    timestamps = _utc_timestamps(event_time, len(ids))

    tables = {
        schema.attributes_view_name: _attribute_table(schema, ids, attributes, timestamps),
        schema.image_view_name: _embedding_table(
            product_ids=ids,
            vectors=image_vectors,
            dim=schema.image_embedding_dim,
            model_id=schema.image_model_id,
            embedding_field=IMAGE_EMBEDDING_FIELD,
            model_id_field=IMAGE_MODEL_ID_FIELD,
            timestamps=timestamps,
        ),
        schema.text_view_name: _embedding_table(
            product_ids=ids,
            vectors=text_vectors,
            dim=schema.text_embedding_dim,
            model_id=schema.text_model_id,
            embedding_field=TEXT_EMBEDDING_FIELD,
            model_id_field=TEXT_MODEL_ID_FIELD,
            timestamps=timestamps,
        ),
    }

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = schema.source_paths(data_dir)
    for view_name, table in tables.items():
        path = paths[view_name]
        if append and path.exists():
            table = _merge_with_existing(path, table)
        # Write to a temporary file first, so a reader never sees a half-written source.
        partial = path.with_suffix(".parquet.tmp")
        pq.write_table(table, partial)
        partial.replace(path)
        logger.info("wrote %d rows of feature view %s to %s", table.num_rows, view_name, path)

    schema.save(data_dir / SCHEMA_FILE_NAME)
    return paths
