"""Aligned model inputs of one finished run, read from its offline feature files and its catalogue.

Experiments read the embeddings that the main job already stored as parquet, so they never run
the image or text encoder again. A product without a stored embedding gets an all-NaN row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.embedding_bytes import unpack_embedding
from features.schema import (
    IMAGE_EMBEDDING_FIELD,
    JOIN_KEY,
    SCHEMA_FILE_NAME,
    TEXT_EMBEDDING_FIELD,
    FeatureSchema,
)
from training.catalogue import Catalogue, load_catalogue
from training.spec import DatasetSpec, load_spec

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
METRICS_FILE = "metrics.json"


class ExperimentDataError(ValueError):
    """A run folder lacks the files an experiment needs, or they do not match the catalogue."""


@dataclass(frozen=True)
class ExperimentData:
    """Inputs and labels of N products, in one row order shared by every array."""

    spec: DatasetSpec
    product_ids: np.ndarray  # (N,) object: product id strings
    image: np.ndarray  # (N, Di) float32, an all-NaN row where the product has no image embedding
    text: np.ndarray  # (N, Dt) float32, an all-NaN row where the product has no text embedding
    attributes: pd.DataFrame  # (N, numeric + categorical columns) as Catalogue.attributes returns
    texts: pd.DataFrame  # (N, text columns): str or None per cell, in the spec's order
    labels: np.ndarray  # (N,) float64, 0.0/1.0 for a binary task
    weights: np.ndarray | None = None  # (N,) float64 sample weights, NaN where missing
    # The spec's auxiliary labels, column -> (N,) float64 with NaN where missing. None without any.
    auxiliary_labels: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        sizes = {
            "image": len(self.image),
            "text": len(self.text),
            "attributes": len(self.attributes),
            "texts": len(self.texts),
            "labels": len(self.labels),
        }
        if self.weights is not None:
            sizes["weights"] = len(self.weights)
        for name, values in (self.auxiliary_labels or {}).items():
            sizes[f"auxiliary_labels[{name!r}]"] = len(values)
        wrong = {name: size for name, size in sizes.items() if size != n}
        if wrong:
            raise ExperimentDataError(f"arrays must have {n} rows like product_ids, got {wrong}")

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def task(self) -> str:
        """The spec's task: "regression" or "binary"."""
        return self.spec.task

    def without(self, modality: str) -> ExperimentData:
        """Return these products with one modality ("image", "text" or "attributes") missing for all of them.

        Text here is the text embedding: the raw text columns stay, since tag columns are attributes too.
        """
        if modality == "image":
            return replace(self, image=np.full_like(self.image, np.nan))
        if modality == "text":
            return replace(self, text=np.full_like(self.text, np.nan))
        if modality == "attributes":
            empty = pd.DataFrame({column: [None] * len(self) for column in self.attributes.columns}, dtype=object)
            return replace(self, attributes=empty)
        raise ValueError(f"modality must be 'image', 'text' or 'attributes', got {modality!r}")

    def take(self, rows: np.ndarray) -> ExperimentData:
        """Return the products at the row positions `rows` (K,), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return ExperimentData(
            spec=self.spec,
            product_ids=self.product_ids[rows],
            image=self.image[rows],
            text=self.text[rows],
            attributes=self.attributes.iloc[rows].reset_index(drop=True),
            texts=self.texts.iloc[rows].reset_index(drop=True),
            labels=self.labels[rows],
            weights=None if self.weights is None else self.weights[rows],
            auxiliary_labels=(
                None
                if self.auxiliary_labels is None
                else {name: values[rows] for name, values in self.auxiliary_labels.items()}
            ),
        )


def load_experiment_data(
    run_dir: Path | str,
    *,
    catalogue_dir: Path | str | None = None,
    spec: DatasetSpec | str | Path | None = None,
) -> ExperimentData:
    """Join a run's stored embeddings with its catalogue into aligned arrays.

    The catalogue folder and spec default to the ones recorded in the run's metrics.json, whose
    relative catalogue path is taken from the repository root (the main job's working folder).
    Raises ExperimentDataError when a file is missing or a catalogue product has no attribute row.
    """
    run_dir = Path(run_dir).resolve()
    features_dir = run_dir / FEATURES_DIR
    schema_path = features_dir / SCHEMA_FILE_NAME
    if not schema_path.is_file():
        raise ExperimentDataError(
            f"{schema_path} not found. Pass the folder of a finished run, which contains {FEATURES_DIR}/"
        )
    schema = FeatureSchema.load(schema_path)

    # 1. The catalogue, as the run read it.
    resolved_spec, resolved_root = _resolve_catalogue(run_dir, catalogue_dir, spec)
    catalogue = load_catalogue(resolved_root, resolved_spec)
    paths = schema.source_paths(features_dir)
    catalogue = _restrict_to_stored(catalogue, paths[schema.attributes_view_name])

    # 2. Stored embeddings, aligned to the catalogue's row order.
    image = _read_embeddings(
        paths[schema.image_view_name], IMAGE_EMBEDDING_FIELD, schema.image_embedding_dim, catalogue
    )
    text = _read_embeddings(
        paths[schema.text_view_name], TEXT_EMBEDDING_FIELD, schema.text_embedding_dim, catalogue
    )

    data = ExperimentData(
        spec=catalogue.spec,
        product_ids=np.asarray(catalogue.product_ids, dtype=object),
        image=image,
        text=text,
        attributes=catalogue.attributes().reset_index(drop=True),
        texts=catalogue.frame[list(catalogue.spec.text_columns)].reset_index(drop=True),
        labels=catalogue.labels,
        weights=catalogue.weights,
        auxiliary_labels=catalogue.auxiliary_labels or None,
    )
    logger.info(
        "experiment data of %s: %d products, image %s (%d missing), text %s (%d missing)",
        run_dir.name,
        len(data),
        image.shape,
        int(np.isnan(image).all(axis=1).sum()),
        text.shape,
        int(np.isnan(text).all(axis=1).sum()),
    )
    return data


def _resolve_catalogue(
    run_dir: Path, catalogue_dir: Path | str | None, spec: DatasetSpec | str | Path | None
) -> tuple[DatasetSpec, Path]:
    settings: dict[str, object] = {}
    dataset_name: str | None = None
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        recorded = json.loads(metrics_path.read_text(encoding="utf-8"))
        settings = recorded.get("settings", {})
        dataset_name = recorded.get("dataset")

    if catalogue_dir is None:
        recorded_root = settings.get("catalogue")
        if not isinstance(recorded_root, str):
            raise ExperimentDataError(
                f"{metrics_path} records no catalogue folder. Pass the catalogue folder with --catalogue"
            )
        # The main job runs from the repository root, so a relative path is relative to it.
        repository_root = Path(__file__).resolve().parents[1]
        catalogue_dir = repository_root / recorded_root

    if spec is None:
        recorded_spec = settings.get("spec") or dataset_name
        if not isinstance(recorded_spec, str):
            raise ExperimentDataError(
                f"{metrics_path} records no spec or dataset name. Pass a spec name or YAML path with --spec"
            )
        spec = recorded_spec
    if not isinstance(spec, DatasetSpec):
        spec = load_spec(spec)
    return spec, Path(catalogue_dir)


def _read_embeddings(path: Path, field: str, dim: int, catalogue: Catalogue) -> np.ndarray:
    """Return (N, dim) float32 vectors in catalogue row order, NaN rows for products without one."""
    if not path.is_file():
        raise ExperimentDataError(f"embedding source {path} not found")
    table = pq.read_table(path, columns=[JOIN_KEY, field]).to_pandas()
    # With appended writes, one product may have several rows, and the last one written wins.
    table = table.drop_duplicates(subset=JOIN_KEY, keep="last").set_index(JOIN_KEY)

    vectors = np.full((len(catalogue), dim), np.nan, dtype=np.float32)  # (N, dim)
    positions = {product_id: row for row, product_id in enumerate(catalogue.product_ids)}
    found = 0
    for product_id, packed in table[field].items():
        row = positions.get(str(product_id))
        if row is None:
            continue
        vectors[row] = unpack_embedding(packed, dim)
        found += 1
    logger.info("read %d of %d %s vectors from %s", found, len(catalogue), field, path.name)
    return vectors


def _restrict_to_stored(catalogue: Catalogue, path: Path) -> Catalogue:
    """Keep the catalogue products that have a stored attribute row, as a run made with --limit has.

    Raises ExperimentDataError when no product has one, because then the run was made from
    another catalogue.
    """
    if not path.is_file():
        raise ExperimentDataError(f"attribute source {path} not found")
    stored = set(pq.read_table(path, columns=[JOIN_KEY]).column(JOIN_KEY).to_pylist())
    kept = [product_id in stored for product_id in catalogue.product_ids]
    if not any(kept):
        raise ExperimentDataError(
            f"none of the {len(catalogue)} catalogue products has a row in {path}. "
            "The run was made from another catalogue; pass the matching one"
        )
    if not all(kept):
        logger.warning(
            "%d of %d catalogue products have no stored features in %s, so the experiment leaves them out",
            len(kept) - sum(kept), len(catalogue), path.parent,
        )
    return Catalogue(spec=catalogue.spec, root=catalogue.root, frame=catalogue.frame[kept])
