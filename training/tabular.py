"""Tabular features for the linear and tree models of the experiments.

`TabularEncoder` turns attributes and text columns into one dense matrix: numeric values (log1p
for log-scale columns) with a missing indicator each, one-hot categories, and a multi-hot of
`; `-separated tag columns (board-game mechanics). `TextTfidf` is a TF-IDF of the title and tag
text, optionally reduced by truncated SVD. Both save their fitted state as JSON and .npz arrays,
never as pickle.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from training.spec import DatasetSpec

logger = logging.getLogger(__name__)

TAG_SEPARATOR = "; "
# A text column is read as tags when at least this share of its non-empty values contains the
# separator and its tags are short (median length in characters at most _MAX_TAG_LENGTH).
_TAG_SHARE = 0.5
_MAX_TAG_LENGTH = 40


def split_tags(value: object) -> list[str]:
    """Return the stripped, non-empty tags of a `; `-separated string, or [] for None."""
    if not isinstance(value, str):
        return []
    return [tag.strip() for tag in value.split(TAG_SEPARATOR.strip()) if tag.strip()]


def detect_tag_columns(texts: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    """Return the text columns other than the title whose values are `; `-separated tag lists."""
    tag_columns: list[str] = []
    for column in spec.text_columns[1:]:
        values = [value for value in texts[column] if isinstance(value, str)]
        if not values:
            continue
        share = sum(TAG_SEPARATOR in value for value in values) / len(values)
        lengths = [len(tag) for value in values for tag in split_tags(value)]
        if share >= _TAG_SHARE and float(np.median(lengths)) <= _MAX_TAG_LENGTH:
            tag_columns.append(column)
    logger.info("tag columns of %s: %s", spec.name, tag_columns or "none")
    return tag_columns


class TabularEncoder:
    """Dense attribute features: numeric + missing indicators, one-hot categories, multi-hot tags.

    Missing numeric values stay NaN in `transform` (tree models split on them) unless
    `impute=True`, which fills the training mean (linear models). Values and tags seen in fewer
    than `min_count` training rows get no column.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        tag_columns: Sequence[str],
        *,
        min_count: int = 5,
        impute: bool = False,
    ) -> None:
        self.numeric = list(spec.numeric_columns)
        self.log_scale = set(spec.log_scale_columns)
        self.categorical = list(spec.categorical_columns)
        self.tag_columns = list(tag_columns)
        self.min_count = min_count
        self.impute = impute
        self.means: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}
        self.tags: dict[str, list[str]] = {}

    @property
    def feature_names(self) -> list[str]:
        """Column names of the `transform` output, in order."""
        names = list(self.numeric) + [f"{column}__missing" for column in self.numeric]
        for column in self.categorical:
            names += [f"{column}={value}" for value in self.categories[column]]
        for column in self.tag_columns:
            names += [f"{column}#{tag}" for tag in self.tags[column]]
        return names

    def fit(self, attributes: pd.DataFrame, texts: pd.DataFrame) -> TabularEncoder:
        """Learn the numeric means, category values and tags from training rows."""
        for column in self.numeric:
            values = self._numeric_values(attributes, column)
            finite = values[np.isfinite(values)]
            self.means[column] = float(finite.mean()) if finite.size else 0.0
        for column in self.categorical:
            counts = Counter(value for value in attributes[column] if isinstance(value, str))
            self.categories[column] = sorted(value for value, count in counts.items() if count >= self.min_count)
        for column in self.tag_columns:
            counts = Counter(tag for value in texts[column] for tag in split_tags(value))
            self.tags[column] = sorted(tag for tag, count in counts.items() if count >= self.min_count)
        return self

    def transform(self, attributes: pd.DataFrame, texts: pd.DataFrame) -> np.ndarray:
        """Return the features (N, len(feature_names)) float32 of N products."""
        blocks: list[np.ndarray] = []
        numeric = np.column_stack(
            [self._numeric_values(attributes, column) for column in self.numeric]
        ) if self.numeric else np.zeros((len(attributes), 0))  # (N, Fn)
        missing = ~np.isfinite(numeric)  # (N, Fn)
        if self.impute:
            numeric = np.where(missing, np.array([self.means[column] for column in self.numeric]), numeric)
        blocks += [numeric, missing.astype(np.float64)]

        for column in self.categorical:
            values = attributes[column].to_numpy(dtype=object)
            blocks.append(np.column_stack([values == value for value in self.categories[column]])
                          if self.categories[column] else np.zeros((len(values), 0)))
        for column in self.tag_columns:
            positions = {tag: index for index, tag in enumerate(self.tags[column])}
            multi_hot = np.zeros((len(texts), len(positions)))  # (N, tags)
            for row, value in enumerate(texts[column]):
                for tag in split_tags(value):
                    if tag in positions:
                        multi_hot[row, positions[tag]] = 1.0
            blocks.append(multi_hot)
        return np.hstack(blocks).astype(np.float32)

    def _numeric_values(self, attributes: pd.DataFrame, column: str) -> np.ndarray:
        values = pd.to_numeric(attributes[column], errors="coerce").to_numpy(dtype=np.float64)
        if column in self.log_scale:
            values = np.where(values >= 0, values, np.nan)
            values = np.log1p(values)
        return values

    def to_dict(self) -> dict[str, Any]:
        """Return the fitted state as JSON-compatible data."""
        return {
            "numeric": self.numeric,
            "log_scale": sorted(self.log_scale),
            "categorical": self.categorical,
            "tag_columns": self.tag_columns,
            "min_count": self.min_count,
            "impute": self.impute,
            "means": self.means,
            "categories": self.categories,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularEncoder:
        """Rebuild an encoder from `to_dict` output."""
        encoder = cls.__new__(cls)
        encoder.numeric = list(data["numeric"])
        encoder.log_scale = set(data["log_scale"])
        encoder.categorical = list(data["categorical"])
        encoder.tag_columns = list(data["tag_columns"])
        encoder.min_count = int(data["min_count"])
        encoder.impute = bool(data["impute"])
        encoder.means = {key: float(value) for key, value in data["means"].items()}
        encoder.categories = {key: list(value) for key, value in data["categories"].items()}
        encoder.tags = {key: list(value) for key, value in data["tags"].items()}
        return encoder


def tfidf_documents(texts: pd.DataFrame, spec: DatasetSpec, tag_columns: Sequence[str]) -> list[str]:
    """Return one document per product: the title, then its tag columns' text."""
    columns = [spec.title_column, *tag_columns]
    documents = []
    for parts in zip(*(texts[column] for column in columns), strict=True):
        documents.append(" ".join(part for part in parts if isinstance(part, str)))
    return documents


class TextTfidf:
    """Word 1-2 gram TF-IDF of the tfidf_documents text, optionally reduced to `components` by SVD."""

    def __init__(self, *, components: int | None = None, min_df: int = 3, seed: int = 0) -> None:
        self.components = components
        self.min_df = min_df
        self.seed = seed
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True)
        self.svd_components: np.ndarray | None = None  # (components, vocabulary) float64

    def fit(self, documents: Sequence[str]) -> TextTfidf:
        """Learn the vocabulary, IDF weights and (with `components`) the SVD basis."""
        matrix = self.vectorizer.fit_transform(documents)  # (N, V) sparse
        if self.components is not None:
            rank = min(self.components, matrix.shape[1] - 1, matrix.shape[0] - 1)
            svd = TruncatedSVD(n_components=rank, random_state=self.seed).fit(matrix)
            self.svd_components = svd.components_
        return self

    def transform_sparse(self, documents: Sequence[str]) -> sp.csr_matrix:
        """Return the TF-IDF matrix (N, V)."""
        return sp.csr_matrix(self.vectorizer.transform(documents))

    def transform(self, documents: Sequence[str]) -> np.ndarray:
        """Return the SVD projection (N, components) float32. It needs a TextTfidf built with `components`."""
        if self.svd_components is None:
            raise ValueError("TextTfidf.transform needs an SVD; construct it with components=K and fit it")
        return np.asarray(self.transform_sparse(documents) @ self.svd_components.T, dtype=np.float32)

    def save(self, directory: Path, prefix: str) -> None:
        """Write the vocabulary as JSON and the IDF and SVD arrays as .npz under `directory`."""
        vocabulary = {term: int(index) for term, index in self.vectorizer.vocabulary_.items()}
        meta = {"components": self.components, "min_df": self.min_df, "seed": self.seed, "vocabulary": vocabulary}
        (directory / f"{prefix}.json").write_text(json.dumps(meta), encoding="utf-8")
        arrays = {"idf": self.vectorizer.idf_}
        if self.svd_components is not None:
            arrays["svd_components"] = self.svd_components
        np.savez(directory / f"{prefix}.npz", **arrays)

    @classmethod
    def load(cls, directory: Path, prefix: str) -> TextTfidf:
        """Read what `save` wrote."""
        meta = json.loads((directory / f"{prefix}.json").read_text(encoding="utf-8"))
        model = cls(components=meta["components"], min_df=meta["min_df"], seed=meta["seed"])
        model.vectorizer = TfidfVectorizer(
            ngram_range=(1, 2), min_df=meta["min_df"], sublinear_tf=True, vocabulary=meta["vocabulary"]
        )
        with np.load(directory / f"{prefix}.npz", allow_pickle=False) as arrays:
            model.vectorizer.idf_ = arrays["idf"]
            model.svd_components = arrays["svd_components"] if "svd_components" in arrays else None
        return model
