"""Encoding of structured product attributes into model inputs.

Numeric columns become a standardised value plus a missing indicator each. Columns listed as
log-scale (prices, counts) go through log1p first, and their negative values count as missing.
Categorical columns become vocabulary indices, where index 0 is the bucket shared by missing and
unknown values. Multi-valued tag columns ("Dice Rolling; Hand Management") become a multi-hot block
over a vocabulary of frequent tags, plus log1p of the count of other tags and a missing indicator. The tag
blocks are appended to the numeric block, so the model takes them as numeric inputs.

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

# Version 2 added tag columns. Version 1 dicts, which have none, still load.
ENCODER_FORMAT_VERSION = 2
_READABLE_FORMAT_VERSIONS = (1, 2)
UNKNOWN_INDEX = 0
DEFAULT_MAX_TAG_VOCABULARY = 200


class AttributeEncodingError(ValueError):
    """An attribute value or column cannot be encoded, or the encoder is used before `fit`."""


@dataclass(frozen=True)
class EncodedAttributes:
    """Model inputs for N products."""

    # (N, numeric_dim) float32: Fn standardised values, Fn missing indicators, then per tag column
    # one 0/1 slot per vocabulary tag, log1p of the number of other tags and a missing indicator.
    numeric: np.ndarray
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
    """Encoder for numeric, categorical and tag attribute columns, fitted on training data.

    `min_count` is the minimum number of training rows a categorical value or a tag needs to get
    its own index or slot. Rarer categorical values share UNKNOWN_INDEX with missing and unseen
    values, and rarer tags count as other tags. `tags` maps each tag column to the separator
    between its tags. A tag column keeps at most `max_tag_vocabulary` tags, the most frequent.
    Tags are stripped of surrounding white space, keep their case, and count once per row.
    """

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        log_scale: Sequence[str] = (),
        *,
        tags: Mapping[str, str] | None = None,
        min_count: int = 2,
        max_tag_vocabulary: int = DEFAULT_MAX_TAG_VOCABULARY,
    ) -> None:
        numeric = list(numeric)
        categorical = list(categorical)
        log_scale = list(log_scale)
        tags = dict(tags or {})

        duplicated = sorted(
            name for name, count in Counter(numeric + categorical + list(tags)).items() if count > 1
        )
        if duplicated:
            raise AttributeEncodingError(
                f"Columns {duplicated} are listed more than once among numeric, categorical and tag "
                "columns. List each column once."
            )
        empty_separators = sorted(
            column for column, separator in tags.items() if not isinstance(separator, str) or not separator
        )
        if empty_separators:
            raise AttributeEncodingError(
                f"Tag columns {empty_separators} have no separator. Give each tag column a non-empty "
                "separator string such as '; '."
            )
        not_numeric = sorted(set(log_scale) - set(numeric))
        if not_numeric:
            raise AttributeEncodingError(
                f"Log-scale columns {not_numeric} are not numeric columns. Add them to the numeric columns "
                "or remove them from the log-scale columns."
            )
        if min_count < 1:
            raise AttributeEncodingError(f"min_count must be at least 1, got {min_count}.")
        if max_tag_vocabulary < 1:
            raise AttributeEncodingError(f"max_tag_vocabulary must be at least 1, got {max_tag_vocabulary}.")

        self.numeric = numeric
        self.categorical = categorical
        self.log_scale = log_scale
        self.tags = tags
        self.min_count = min_count
        self.max_tag_vocabulary = max_tag_vocabulary
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}
        # Values in index order: vocabularies[column][i] has index i + 1.
        self.vocabularies: dict[str, list[str]] = {}
        self._indices: dict[str, dict[str, int]] = {}
        # Tags in slot order, most frequent first: tag_vocabularies[column][i] has slot i.
        self.tag_vocabularies: dict[str, list[str]] = {}
        self._tag_slots: dict[str, dict[str, int]] = {}
        self.fitted = False

    @property
    def columns(self) -> list[str]:
        """Numeric, then categorical, then tag columns."""
        return self.numeric + self.categorical + list(self.tags)

    @property
    def numeric_dim(self) -> int:
        """Width of `EncodedAttributes.numeric`.

        Each numeric column has a value and a missing indicator, and each tag column has its
        vocabulary slots, an other-tags count and a missing indicator. With tag columns the width
        depends on the fitted vocabularies, so it is only known after `fit`.
        """
        if self.tags:
            self._require_fitted()
        return 2 * len(self.numeric) + sum(len(self.tag_vocabularies[column]) + 2 for column in self.tags)

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

        for column, separator in self.tags.items():
            # Each row counts a tag once, however often the row repeats it.
            tag_counts: Counter[str] = Counter()
            for value in frame[column].to_numpy():
                tag_counts.update(_split_tags(value, separator))
            frequent_tags = [tag for tag, count in tag_counts.items() if count >= self.min_count]
            frequent_tags.sort(key=lambda tag: (-tag_counts[tag], tag))
            self.tag_vocabularies[column] = frequent_tags[: self.max_tag_vocabulary]

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
            "tags": dict(self.tags),
            "max_tag_vocabulary": self.max_tag_vocabulary,
            "tag_vocabularies": {column: list(tags) for column, tags in self.tag_vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributeEncoder:
        """Rebuild a fitted encoder from the output of `to_dict`, of this or an earlier format version."""
        version = data.get("format_version")
        if version not in _READABLE_FORMAT_VERSIONS:
            raise AttributeEncodingError(
                f"Attribute encoder format version {version!r} is not supported, because this code reads "
                f"versions {list(_READABLE_FORMAT_VERSIONS)}. Retrain the model with this version of the code."
            )
        encoder = cls(
            data["numeric"],
            data["categorical"],
            data["log_scale"],
            tags=data.get("tags", {}),
            min_count=data["min_count"],
            max_tag_vocabulary=data.get("max_tag_vocabulary", DEFAULT_MAX_TAG_VOCABULARY),
        )
        encoder.means = {column: float(data["means"][column]) for column in encoder.numeric}
        encoder.stds = {column: float(data["stds"][column]) for column in encoder.numeric}
        encoder.vocabularies = {column: list(data["vocabularies"][column]) for column in encoder.categorical}
        encoder.tag_vocabularies = {column: list(data["tag_vocabularies"][column]) for column in encoder.tags}
        encoder._build_indices()
        encoder.fitted = True
        return encoder

    def _encode(self, columns: Mapping[str, np.ndarray], n_rows: int) -> EncodedAttributes:
        self._require_fitted()
        n_numeric = len(self.numeric)
        numeric = np.zeros((n_rows, self.numeric_dim), dtype=np.float32)  # (N, numeric_dim)
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

        offset = 2 * n_numeric
        for column, separator in self.tags.items():
            slots = self._tag_slots[column]
            other_slot = offset + len(slots)
            missing_slot = other_slot + 1
            for i, value in enumerate(columns[column]):
                row_tags = _split_tags(value, separator)
                if not row_tags:
                    numeric[i, missing_slot] = 1.0
                    continue
                any_present[i] = True
                for tag in row_tags:
                    slot = slots.get(tag)
                    if slot is None:
                        numeric[i, other_slot] += 1.0
                    else:
                        numeric[i, offset + slot] = 1.0
            # log1p keeps the slot bounded when a request lists thousands of unknown tags.
            numeric[:, other_slot] = np.log1p(numeric[:, other_slot])
            offset = missing_slot + 1

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
        self._tag_slots = {
            column: {tag: i for i, tag in enumerate(tags)} for column, tags in self.tag_vocabularies.items()
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


def _split_tags(value: object, separator: str) -> set[str]:
    """Return the distinct stripped tags of a tag value, an empty set when it is missing or blank.

    The separator's surrounding white space is optional, so with "; " the value "A;B" has two tags.
    """
    key = _categorical_key(value)
    if key is None:
        return set()
    core = separator.strip() or separator
    return {tag.strip() for tag in key.split(core)} - {""}
