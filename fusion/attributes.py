"""Encoding of structured product attributes into model inputs.

Numeric columns become a standardised value plus a missing indicator each. Columns listed as
log-scale (prices, counts) go through log1p first, and their negative values count as missing.
Categorical columns become vocabulary indices, where index 0 is the bucket shared by missing and
unknown values. Multi-valued tag columns are not supported.

Both input paths, rows as mappings (feature store, gRPC requests) and a pandas DataFrame (training),
share one conversion per column, so they give identical outputs for the same values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

AttributeValue = float | int | str | None
AttributeRow = Mapping[str, AttributeValue]

ENCODER_FORMAT_VERSION = 1
UNKNOWN_INDEX = 0


class AttributeEncodingError(ValueError):
    """An attribute value or column cannot be encoded, or the encoder is used before `fit`."""


@dataclass(frozen=True)
class EncodedAttributes:
    """Model inputs for N products."""

    numeric: np.ndarray  # (N, 2 * Fn) float32: Fn standardised values, then Fn missing indicators
    categorical: np.ndarray  # (N, Fc) int64 vocabulary indices, UNKNOWN_INDEX for missing or unseen
    any_present: np.ndarray  # (N,) bool: at least one attribute value was given and valid

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


def is_missing_value(value: object) -> bool:
    """Return True for None, NaN, ±inf, pandas NA and blank strings."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, Real):
        return not math.isfinite(float(value))
    return False


class AttributeEncoder:
    """Encoder for numeric and categorical attribute columns, fitted on training data.

    `min_count` is the minimum number of training rows a categorical value needs to get its own
    index. Rarer values share UNKNOWN_INDEX with missing and unseen values.
    """

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        log_scale: Sequence[str] = (),
        *,
        min_count: int = 2,
    ) -> None:
        numeric = list(numeric)
        categorical = list(categorical)
        log_scale = list(log_scale)

        duplicated = sorted(name for name, count in Counter(numeric + categorical).items() if count > 1)
        if duplicated:
            raise AttributeEncodingError(
                f"Columns {duplicated} are listed more than once among numeric and categorical "
                "columns. List each column once."
            )
        not_numeric = sorted(set(log_scale) - set(numeric))
        if not_numeric:
            raise AttributeEncodingError(
                f"Log-scale columns {not_numeric} are not numeric columns. Add them to the numeric columns "
                "or remove them from the log-scale columns."
            )
        if min_count < 1:
            raise AttributeEncodingError(f"min_count must be at least 1, got {min_count}.")

        self.numeric = numeric
        self.categorical = categorical
        self.log_scale = log_scale
        self.min_count = min_count
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        # Values in index order: vocabularies[column][i] has index i + 1.
        self.vocabularies: dict[str, list[str]] = {}
        self._indices: dict[str, dict[str, int]] = {}
        self.fitted = False

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def numeric_dim(self) -> int:
        """Width of `EncodedAttributes.numeric`: one value and one missing indicator per column."""
        return 2 * len(self.numeric)

    @property
    def categorical_cardinalities(self) -> list[int]:
        """Number of indices per categorical column, UNKNOWN_INDEX included."""
        self._require_fitted()
        return [len(self.vocabularies[column]) + 1 for column in self.categorical]

    def fit(self, frame: pd.DataFrame) -> AttributeEncoder:
        """Compute the standardisation statistics and vocabularies from training rows."""
        self._require_columns(frame)

        for column in self.numeric:
            values = self._numeric_values(column, frame[column].to_numpy())  # (N,) NaN = missing
            observed = values[~np.isnan(values)]
            # Mean 0 and std 1 keep a column without any observed value finite, so it encodes as all-missing.
            mean = float(observed.mean()) if observed.size else 0.0
            std = float(observed.std()) if observed.size else 1.0
            self.means[column] = mean
            self.stds[column] = std if std > 1e-12 else 1.0

        for column in self.categorical:
            counts = Counter(
                value for value in (_categorical_key(v) for v in frame[column].to_numpy()) if value is not None
            )
            frequent_values = [value for value, count in counts.items() if count >= self.min_count]
            # Most frequent first, ties by value, so the same data always gives the same indices.
            frequent_values.sort(key=lambda value: (-counts[value], value))
            self.vocabularies[column] = frequent_values

        self._build_indices()
        self.fitted = True
        return self

    def transform(self, rows: Sequence[AttributeRow | None]) -> EncodedAttributes:
        """Encode rows given as mappings from column name to value.

        A row of None or a column absent from a row counts as missing. Keys that are not attribute
        columns are ignored, so feature-store rows can carry other fields.
        """
        columns = {
            column: np.array([None if row is None else row.get(column) for row in rows], dtype=object)
            for column in self.columns
        }
        return self._encode(columns, len(rows))

    def transform_frame(self, frame: pd.DataFrame) -> EncodedAttributes:
        """Encode the rows of a DataFrame that has every attribute column."""
        self._require_columns(frame)
        columns = {column: frame[column].to_numpy() for column in self.columns}
        return self._encode(columns, len(frame))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description from which `from_dict` rebuilds this encoder."""
        self._require_fitted()
        return {
            "format_version": ENCODER_FORMAT_VERSION,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "log_scale": list(self.log_scale),
            "min_count": self.min_count,
            "means": dict(self.means),
            "stds": dict(self.stds),
            "vocabularies": {column: list(values) for column, values in self.vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributeEncoder:
        """Rebuild a fitted encoder from the output of `to_dict`."""
        version = data.get("format_version")
        if version != ENCODER_FORMAT_VERSION:
            raise AttributeEncodingError(
                f"Attribute encoder format version {version!r} is not supported, because this code reads "
                f"version {ENCODER_FORMAT_VERSION}. Retrain the model with this version of the code."
            )
        encoder = cls(data["numeric"], data["categorical"], data["log_scale"], min_count=data["min_count"])
        encoder.means = {column: float(data["means"][column]) for column in encoder.numeric}
        encoder.stds = {column: float(data["stds"][column]) for column in encoder.numeric}
        encoder.vocabularies = {column: list(data["vocabularies"][column]) for column in encoder.categorical}
        encoder._build_indices()
        encoder.fitted = True
        return encoder

    def _encode(self, columns: Mapping[str, np.ndarray], n_rows: int) -> EncodedAttributes:
        self._require_fitted()
        n_numeric = len(self.numeric)
        numeric = np.zeros((n_rows, 2 * n_numeric), dtype=np.float32)  # (N, 2 * Fn)
        categorical = np.zeros((n_rows, len(self.categorical)), dtype=np.int64)  # (N, Fc)
        any_present = np.zeros(n_rows, dtype=bool)  # (N,)

        for j, column in enumerate(self.numeric):
            values = self._numeric_values(column, columns[column])  # (N,) NaN = missing
            missing = np.isnan(values)
            standardised = (values - self.means[column]) / self.stds[column]
            # Missing values sit at the training mean, which is 0 after standardisation, and the
            # missing indicator distinguishes them from observed values at the mean.
            # A finite value beyond float32's range becomes inf here; callers reject non-finite
            # predictions, so the overflow warning is silenced rather than raised.
            with np.errstate(over="ignore"):
                numeric[:, j] = np.where(missing, 0.0, standardised)
            numeric[:, n_numeric + j] = missing
            any_present |= ~missing

        for j, column in enumerate(self.categorical):
            keys = [_categorical_key(value) for value in columns[column]]
            index = self._indices[column]
            categorical[:, j] = [UNKNOWN_INDEX if key is None else index.get(key, UNKNOWN_INDEX) for key in keys]
            any_present |= np.array([key is not None for key in keys], dtype=bool)

        return EncodedAttributes(numeric=numeric, categorical=categorical, any_present=any_present)

    def _numeric_values(self, column: str, raw: np.ndarray) -> np.ndarray:
        """Convert one column to float64 with NaN for missing, applying log1p to log-scale columns."""
        if raw.dtype.kind in "biuf":
            values = raw.astype(np.float64)
        else:
            values = np.array([_to_float(column, value) for value in raw], dtype=np.float64)
        values[~np.isfinite(values)] = np.nan

        if column in self.log_scale:
            values[values < 0] = np.nan
            values = np.log1p(values)
        return values

    def _build_indices(self) -> None:
        self._indices = {
            column: {value: i + 1 for i, value in enumerate(values)}
            for column, values in self.vocabularies.items()
        }

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise AttributeEncodingError(
                "The attribute encoder is not fitted. Call fit() on training data or load it with from_dict()."
            )

    def _require_columns(self, frame: pd.DataFrame) -> None:
        absent = [column for column in self.columns if column not in frame.columns]
        if absent:
            raise AttributeEncodingError(
                f"Attribute columns {absent} are missing from the DataFrame, which has columns "
                f"{list(frame.columns)}."
            )


def _to_float(column: str, value: object) -> float:
    if is_missing_value(value):
        return math.nan
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise AttributeEncodingError(
                f"Numeric attribute {column!r} has the invalid value {value!r}, which is not a number. Send a "
                "number or leave the value out."
            ) from None
    raise AttributeEncodingError(
        f"Numeric attribute {column!r} has the invalid value {value!r} of type {type(value).__name__}. "
        "Send a number."
    )


def _categorical_key(value: object) -> str | None:
    """Return the vocabulary key of a categorical value, or None when it is missing.

    Whole floats map to the integer text, so 2019.0 (a year column that pandas read as float because
    of a missing value) and the request value "2019" share a key.
    """
    if is_missing_value(value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()
