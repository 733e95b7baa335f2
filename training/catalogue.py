"""Product catalogues: a products.csv and its images, read and cleaned as a DatasetSpec describes."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from training.spec import DatasetSpec

logger = logging.getLogger(__name__)

PRODUCTS_FILE = "products.csv"
DATASETS_DIR_ENV = "PQ_DATASETS_DIR"
INDEX_NAME = "product_id"  # name of Catalogue.frame's index, whatever the spec's id column is called

_TRUE_LABELS = frozenset({"1", "1.0", "true"})
_FALSE_LABELS = frozenset({"0", "0.0", "false"})
_EXAMPLES_LOGGED = 5  # ids or values quoted in one warning


class CatalogueError(ValueError):
    """A malformed catalogue file. The message names the file, the column and the value."""


def default_datasets_dir() -> Path:
    """Return $PQ_DATASETS_DIR, or else the `shared/datasets` folder next to the repository."""
    configured = os.environ.get(DATASETS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


@dataclass(frozen=True)
class DatasetSplit:
    """Row positions of a catalogue's train, validation and test parts, each sorted."""

    train: np.ndarray  # (N_train,) int64
    validation: np.ndarray  # (N_validation,) int64
    test: np.ndarray  # (N_test,) int64


@dataclass
class Catalogue:
    """Cleaned products of one catalogue, one row per product.

    `frame` is indexed by the product id as a string. Its columns, with the types they contain:

    - text columns: str, or None when empty
    - numeric attributes: float64, NaN when missing
    - categorical attributes: str or None
    - tag attributes: the raw string of separated tags, or None when empty. A tag column that is
      also a text column has the text's cleaned value, with whitespace runs collapsed.
    - the image column: absolute Path, or None when the product has no image file
    - the label: float64, 0.0/1.0 for a binary task
    - the weight column, if the spec has one: float64
    - each auxiliary label: float64, NaN when missing, 0.0/1.0 for a binary one
    """

    spec: DatasetSpec
    root: Path
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def product_ids(self) -> list[str]:
        """Product ids in row order."""
        return self.frame.index.tolist()

    @property
    def labels(self) -> np.ndarray:
        """Label per product, (N,) float64."""
        return self.frame[self.spec.label_column].to_numpy(dtype=np.float64)

    @property
    def weights(self) -> np.ndarray | None:
        """Sample weight per product, (N,) float64 with NaN where missing, or None without a weight column."""
        if self.spec.weight_column is None:
            return None
        return self.frame[self.spec.weight_column].to_numpy(dtype=np.float64)

    @property
    def auxiliary_labels(self) -> dict[str, np.ndarray]:
        """Each auxiliary label of the spec as (N,) float64, NaN where missing. Empty when the spec has none."""
        return {
            name: self.frame[name].to_numpy(dtype=np.float64) for name in self.spec.auxiliary_labels
        }

    @property
    def missing_image_count(self) -> int:
        """Number of products without an image file."""
        return int(self.frame[self.spec.image_column].isna().sum())

    def image_path(self, product_id: str) -> Path | None:
        """Return the absolute path of the product's image, or None when it has none."""
        value = self.frame.at[product_id, self.spec.image_column]
        return value if isinstance(value, Path) else None

    def image_paths(self) -> list[Path | None]:
        """Return each product's image path (None when missing), in row order."""
        return [value if isinstance(value, Path) else None for value in self.frame[self.spec.image_column]]

    def text(self, product_id: str) -> str:
        """Return the product's text: the title, then each other non-empty text column, one per line."""
        row = self.frame.loc[product_id, list(self.spec.text_columns)]
        return _join_text(row.tolist())

    def texts(self) -> list[str]:
        """Return every product's text (see `text`), in row order."""
        columns = [self.frame[name].tolist() for name in self.spec.text_columns]
        return [_join_text(list(parts)) for parts in zip(*columns, strict=True)]

    def attributes(self) -> pd.DataFrame:
        """Return the numeric, categorical and tag attribute columns, indexed by product id."""
        return self.frame[list(self.spec.attribute_columns)]

    def attribute_rows(self) -> list[dict[str, float | str | None]]:
        """Return one {column: value} mapping per product, with None for every missing value."""
        rows: list[dict[str, float | str | None]] = []
        for record in self.attributes().to_dict(orient="records"):
            row: dict[str, float | str | None] = {}
            for name, value in record.items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    row[str(name)] = None
                else:
                    row[str(name)] = value
            rows.append(row)
        return rows

    def subset(self, positions: np.ndarray | list[int]) -> Catalogue:
        """Return a catalogue of the rows at `positions`, in that order."""
        return Catalogue(spec=self.spec, root=self.root, frame=self.frame.iloc[np.asarray(positions)].copy())

    def split(
        self, *, validation_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
    ) -> DatasetSplit:
        """Split the rows at random into train, validation and test parts, the same way for a seed.

        For a binary task the split is stratified by label, so each part keeps the positive rate.
        Raises ValueError when a fraction is outside [0, 1) or the parts would leave no training row.
        """
        for name, fraction in (
            ("validation_fraction", validation_fraction),
            ("test_fraction", test_fraction),
        ):
            if not 0.0 <= fraction < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {fraction}")
        if validation_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"validation_fraction + test_fraction must be below 1 to leave training rows, "
                f"got {validation_fraction} + {test_fraction}"
            )

        positions = np.arange(len(self), dtype=np.int64)
        rng = np.random.RandomState(seed)
        train, test = _split_off(positions, self._stratify_labels(positions), test_fraction, rng)
        # The validation part is a fraction of the whole catalogue, so rescale it to what remains.
        remaining_fraction = validation_fraction / (1.0 - test_fraction)
        train, validation = _split_off(train, self._stratify_labels(train), remaining_fraction, rng)
        if len(train) == 0:
            raise ValueError(
                f"a catalogue of {len(self)} products is too small to split, because no training row is left"
            )
        return DatasetSplit(train=np.sort(train), validation=np.sort(validation), test=np.sort(test))

    def _stratify_labels(self, positions: np.ndarray) -> np.ndarray | None:
        if self.spec.task != "binary":
            return None
        labels = self.labels[positions]
        _, counts = np.unique(labels, return_counts=True)
        if len(counts) < 2 or counts.min() < 2:
            logger.warning(
                "split of %s is not stratified, because a label class has fewer than 2 of %d products",
                self.spec.name,
                len(positions),
            )
            return None
        return labels


def _split_off(
    positions: np.ndarray, labels: np.ndarray | None, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Split `positions` into (rest, part), with about `fraction` of them in part."""
    if fraction == 0.0 or len(positions) < 2:
        return positions, positions[:0]
    part_size = max(1, round(len(positions) * fraction))
    if labels is not None and part_size < len(np.unique(labels)):
        labels = None  # sklearn needs at least one row per class in each part when stratifying
    rest, part = train_test_split(positions, test_size=part_size, random_state=rng, stratify=labels)
    return np.asarray(rest, dtype=np.int64), np.asarray(part, dtype=np.int64)


def _join_text(parts: list[str | None]) -> str:
    return "\n".join(part for part in parts if part)


def load_catalogue(
    root: Path | str, spec: DatasetSpec, *, limit: int | None = None, seed: int = 0
) -> Catalogue:
    """Read `root`/products.csv as `spec` describes and return the cleaned catalogue.

    Rows without a label are dropped. `limit` keeps a random subset of that many labelled
    products (the same subset for the same seed), in file order. Image paths are resolved against
    `root`, and a product whose file does not exist gets no image (counted and logged). Raises
    SpecError when a column the spec names is missing, and CatalogueError for a malformed value.
    """
    root = Path(root).resolve()
    csv_path = root / PRODUCTS_FILE
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of products or None, got {limit}")
    spec.check_csv(csv_path)

    # Every cell is read as text, so ids keep leading zeros and a brand named "NA" stays a brand.
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    raw = raw.apply(lambda column: column.str.strip())
    product_ids = _product_ids(raw[spec.id_column], csv_path, spec.id_column)

    labels = _labels(raw[spec.label_column], spec.label_column, spec.task, csv_path, product_ids)
    labelled = ~np.isnan(labels)
    if not labelled.all():
        logger.info(
            "%s: dropped %d of %d products without a %s label",
            csv_path,
            int((~labelled).sum()),
            len(raw),
            spec.label_column,
        )
    keep = np.flatnonzero(labelled)
    if limit is not None and limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
    raw = raw.iloc[keep].reset_index(drop=True)
    product_ids = product_ids.iloc[keep].reset_index(drop=True)

    columns: dict[str, pd.Series] = {}
    for name in spec.text_columns:
        columns[name] = raw[name].map(_clean_text)
    for name in spec.numeric_columns:
        columns[name] = _numeric(raw[name], spec, csv_path, name)
    for name in spec.categorical_columns:
        columns[name] = _categorical(raw[name], spec, csv_path, name)
    for name in spec.tag_columns:
        if name not in columns:  # the column is also a text column, read above
            columns[name] = raw[name].where(raw[name].ne(""), None).astype(object).reset_index(drop=True)
    columns[spec.image_column] = _image_files(raw[spec.image_column], root, product_ids, spec.image_column)
    columns[spec.label_column] = pd.Series(labels[keep])
    if spec.weight_column is not None:
        columns[spec.weight_column] = _numeric(raw[spec.weight_column], spec, csv_path, spec.weight_column)
    for name, task in spec.auxiliary_labels.items():
        columns[name] = pd.Series(_labels(raw[name], name, task, csv_path, product_ids))

    frame = pd.DataFrame(columns)
    frame.index = pd.Index(product_ids.tolist(), name=INDEX_NAME, dtype=object)
    catalogue = Catalogue(spec=spec, root=root, frame=frame)
    logger.info(
        "loaded %d products from %s with spec %s (%d without an image file)",
        len(catalogue),
        csv_path,
        spec.name,
        catalogue.missing_image_count,
    )
    return catalogue


def _product_ids(values: pd.Series, csv_path: Path, column: str) -> pd.Series:
    empty = np.flatnonzero(values.eq("").to_numpy())
    if len(empty):
        # Data rows count from 1 after the header, not in lines, because quoted fields may span lines.
        rows = ", ".join(str(position + 1) for position in empty[:_EXAMPLES_LOGGED])
        raise CatalogueError(
            f"{csv_path}: {column} is empty on {len(empty)} row(s), first at data row(s) {rows}"
        )
    duplicated = values[values.duplicated()].unique()
    if len(duplicated):
        examples = ", ".join(repr(value) for value in duplicated[:_EXAMPLES_LOGGED])
        raise CatalogueError(
            f"{csv_path}: {column} has {len(duplicated)} duplicated id(s), for example {examples}"
        )
    return values


def _labels(
    values: pd.Series, column: str, task: str, csv_path: Path, product_ids: pd.Series
) -> np.ndarray:
    """Parse a label column to float64 with NaN where it is empty, or raise CatalogueError on other text."""
    if task == "binary":
        lowered = values.str.lower()
        labels = np.where(lowered.isin(_TRUE_LABELS), 1.0, np.where(lowered.isin(_FALSE_LABELS), 0.0, np.nan))
        invalid = ~(lowered.isin(_TRUE_LABELS) | lowered.isin(_FALSE_LABELS) | lowered.eq(""))
        expected = "1/0 or true/false"
    else:
        labels = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        invalid = values.ne("") & ~np.isfinite(labels)
        expected = "a finite number"
    invalid = np.asarray(invalid)
    if invalid.any():
        position = int(np.flatnonzero(invalid)[0])
        raise CatalogueError(
            f"{csv_path}: {column} is {values.iloc[position]!r} for product "
            f"{product_ids.iloc[position]!r}. Expected {expected}, or empty for an unlabelled product "
            f"({int(invalid.sum())} invalid value(s) in all)"
        )
    return np.asarray(labels, dtype=np.float64)


def _numeric(values: pd.Series, spec: DatasetSpec, csv_path: Path, column: str) -> pd.Series:
    """Parse a numeric column to float64, with NaN for empty, unparsable, non-finite and marker values."""
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    invalid = values.ne("") & ~np.isfinite(numbers)
    if invalid.any():
        examples = ", ".join(repr(value) for value in values[invalid].unique()[:_EXAMPLES_LOGGED])
        logger.warning(
            "%s: %s has %d value(s) that are not finite numbers, read as missing: %s",
            csv_path,
            column,
            int(invalid.sum()),
            examples,
        )
    numbers[~np.isfinite(numbers)] = np.nan

    markers = [float(value) for value in spec.missing_markers(column)]
    if markers:
        marked = numbers.isin(markers)
        if marked.any():
            logger.info(
                "%s: %s: %d value(s) in %s read as missing", csv_path, column, int(marked.sum()), markers
            )
        numbers[marked] = np.nan
    return numbers.reset_index(drop=True)


def _categorical(values: pd.Series, spec: DatasetSpec, csv_path: Path, column: str) -> pd.Series:
    markers = {str(value) for value in spec.missing_markers(column)}
    marked = values.isin(markers)
    if marked.any():
        logger.info(
            "%s: %s: %d value(s) in %s read as missing", csv_path, column, int(marked.sum()), sorted(markers)
        )
    cleaned = values.where(values.ne("") & ~marked, None)
    return cleaned.astype(object).reset_index(drop=True)


def _clean_text(value: str) -> str | None:
    # Whitespace runs (\r\n, tabs) collapse to one space, so "\n" only separates text columns.
    collapsed = " ".join(value.split())
    return collapsed or None


def _image_files(values: pd.Series, root: Path, product_ids: pd.Series, column: str) -> pd.Series:
    """Resolve image paths against `root`, with None where the path is empty or the file does not exist."""
    files: list[Path | None] = []
    missing_ids: list[str] = []
    for product_id, value in zip(product_ids, values, strict=True):
        if not value:
            files.append(None)
            continue
        path = (root / value).resolve()
        if not path.is_relative_to(root):
            raise CatalogueError(
                f"{root / PRODUCTS_FILE}: {column} {value!r} of product {product_id!r} points outside "
                f"the catalogue folder {root}. Image paths must be relative to it"
            )
        if path.is_file():
            files.append(path)
        else:
            files.append(None)
            missing_ids.append(product_id)
    if missing_ids:
        logger.warning(
            "%s: %d image file(s) not found, so those products have no image, for example %s",
            root,
            len(missing_ids),
            ", ".join(missing_ids[:_EXAMPLES_LOGGED]),
        )
    empty = int(values.eq("").sum())
    if empty:
        logger.info("%s: %d product(s) have an empty %s", root, empty, column)
    return pd.Series(files, dtype=object)
