"""Dataset specifications: which catalogue columns are inputs, label, auxiliary labels, weight, or excluded.

A spec is a YAML file. The built-in ones live in `training/specs/` and load by name
(`load_spec("boardgames")`), and any other file loads by path. Loading validates the keys and
the column roles, and `DatasetSpec.check_columns` validates the spec against a catalogue's header.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import yaml

if TYPE_CHECKING:
    from fusion.attributes import AttributeEncoder

SPECS_DIR = Path(__file__).resolve().parent / "specs"

Task = Literal["regression", "binary"]
ExclusionKind = Literal["leak", "not_input"]

_REQUIRED_KEYS = ("name", "id_column", "image_column", "text_columns", "label_column", "task")
_OPTIONAL_KEYS = (
    "description",
    "numeric_columns",
    "categorical_columns",
    "log_scale_columns",
    "excluded_columns",
    "weight_column",
    "missing_values",
    "tag_columns",
    "auxiliary_labels",
)
_EXCLUSION_KEYS = ("kind", "reason")


class SpecError(ValueError):
    """A dataset spec is invalid or does not match its catalogue. The message names the file and key."""


@dataclass(frozen=True)
class ExcludedColumn:
    """A catalogue column that must never be a model input, with the reason why."""

    name: str
    kind: ExclusionKind  # "leak" when derived from or observed with the label, else "not_input"
    reason: str


@dataclass(frozen=True)
class DatasetSpec:
    """Roles of a product catalogue's columns: inputs per modality, label, weight and exclusions.

    Column lists are tuples in the order the YAML gives them. The first text column is the title.
    """

    name: str
    description: str
    id_column: str
    image_column: str
    text_columns: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    log_scale_columns: tuple[str, ...]  # subset of numeric_columns (prices): log1p before scaling
    label_column: str
    task: Task
    excluded_columns: tuple[ExcludedColumn, ...]
    weight_column: str | None = None  # per-product sample weight, never an input
    # (column, values) pairs: attribute values that mean "unknown" in this catalogue, such as 0 years
    missing_values: tuple[tuple[str, tuple[float | str, ...]], ...] = ()
    # Multi-valued tag columns, each with the separator between its tags ({"mechanics": "; "}). A tag
    # column may also be a text column, but no other role.
    tag_columns: Mapping[str, str] = field(default_factory=dict)
    # Auxiliary training targets, column -> task ({"product_rating": "regression"}). They are never
    # inputs, and a product may lack a value (NaN), which masks it out of that task's loss.
    auxiliary_labels: Mapping[str, Task] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)  # YAML file the spec was read from

    @property
    def title_column(self) -> str:
        """Text column that contains the product name."""
        return self.text_columns[0]

    @property
    def attribute_columns(self) -> tuple[str, ...]:
        """Numeric, then categorical, then tag attribute columns."""
        return self.numeric_columns + self.categorical_columns + tuple(self.tag_columns)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Every column a model reads, each once: image, texts, then the attribute columns."""
        return tuple(dict.fromkeys((self.image_column, *self.text_columns, *self.attribute_columns)))

    @property
    def excluded_names(self) -> tuple[str, ...]:
        """Names of the excluded columns."""
        return tuple(column.name for column in self.excluded_columns)

    @property
    def leak_columns(self) -> tuple[str, ...]:
        """Names of the excluded columns that leak the label."""
        return tuple(column.name for column in self.excluded_columns if column.kind == "leak")

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column the spec names, which a catalogue must therefore contain."""
        names = [self.id_column, *self.input_columns, self.label_column]
        if self.weight_column is not None:
            names.append(self.weight_column)
        names.extend(self.auxiliary_labels)
        names.extend(self.excluded_names)
        return tuple(dict.fromkeys(names))

    def missing_markers(self, column: str) -> tuple[float | str, ...]:
        """Return the values of `column` that the catalogue uses to mean "unknown" (often none)."""
        for name, values in self.missing_values:
            if name == column:
                return values
        return ()

    def check_columns(self, columns: Iterable[str], *, csv_path: Path) -> None:
        """Raise SpecError unless every column the spec names is among `columns` (a CSV header)."""
        present = set(columns)
        missing = [name for name in self.required_columns if name not in present]
        if missing:
            raise SpecError(
                f"{csv_path}: missing column(s) {', '.join(missing)} named by spec {self.name!r} "
                f"({self.source or 'built in memory'}). Fix the spec or pick the spec for this catalogue"
            )

    def check_csv(self, csv_path: Path) -> None:
        """Raise SpecError unless the CSV file's header contains every column the spec names."""
        try:
            with open(csv_path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), None)
        except OSError as error:
            raise SpecError(f"{csv_path}: cannot read the catalogue: {error}") from error
        if header is None:
            raise SpecError(f"{csv_path}: the catalogue is empty, so it has no header row")
        self.check_columns(header, csv_path=csv_path)

    def attribute_encoder(self) -> AttributeEncoder:
        """Return an unfitted AttributeEncoder of this spec's numeric, log-scale, categorical and tag columns."""
        from fusion.attributes import AttributeEncoder  # imported here: the fusion package imports torch

        return AttributeEncoder(
            numeric=list(self.numeric_columns),
            categorical=list(self.categorical_columns),
            log_scale=list(self.log_scale_columns),
            tags=self.tag_columns,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as the YAML mapping it loads from (without `source`)."""
        return {
            "name": self.name,
            "description": self.description,
            "id_column": self.id_column,
            "image_column": self.image_column,
            "text_columns": list(self.text_columns),
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
            "log_scale_columns": list(self.log_scale_columns),
            "label_column": self.label_column,
            "task": self.task,
            "weight_column": self.weight_column,
            "missing_values": {name: list(values) for name, values in self.missing_values},
            "tag_columns": dict(self.tag_columns),
            "auxiliary_labels": dict(self.auxiliary_labels),
            "excluded_columns": {
                column.name: {"kind": column.kind, "reason": column.reason}
                for column in self.excluded_columns
            },
        }


def builtin_spec_names() -> list[str]:
    """Return the names of the specs shipped in `training/specs/`, sorted."""
    return sorted(path.stem for path in SPECS_DIR.glob("*.yaml"))


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """Load a built-in spec by name, or a spec YAML file by path, and validate it.

    A `Path`, or a string that contains a path separator or ends in .yaml/.yml, is a file path.
    Any other string is the name of a built-in spec.
    """
    if isinstance(name_or_path, Path) or _looks_like_path(name_or_path):
        path = Path(name_or_path)
    else:
        path = SPECS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SpecError(
                f"unknown built-in spec {name_or_path!r}. Use one of {', '.join(builtin_spec_names())}, "
                "or pass the path of a spec YAML file"
            )

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot read the spec file: {error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: invalid YAML: {error}") from error
    return spec_from_dict(data, source=path)


def spec_from_dict(data: Any, *, source: Path | None = None) -> DatasetSpec:
    """Build and validate a spec from its YAML mapping. Errors name `source` and the key."""
    where = str(source) if source is not None else "<spec>"
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping of spec keys, got {type(data).__name__}")

    unknown = [str(key) for key in data if key not in _REQUIRED_KEYS + _OPTIONAL_KEYS]
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)}. "
            f"Allowed keys: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise SpecError(f"{where}: missing required key(s) {', '.join(missing)}")

    task = _string(data, "task", where)
    if task not in get_args(Task):
        raise SpecError(f"{where}: task: expected one of {', '.join(get_args(Task))}, got {task!r}")
    weight_column = data.get("weight_column")
    if weight_column is not None:
        weight_column = _string(data, "weight_column", where)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpecError(f"{where}: description: expected a string, got {type(description).__name__}")

    spec = DatasetSpec(
        name=_string(data, "name", where),
        description=description.strip(),
        id_column=_string(data, "id_column", where),
        image_column=_string(data, "image_column", where),
        text_columns=_string_list(data, "text_columns", where, allow_empty=False),
        numeric_columns=_string_list(data, "numeric_columns", where),
        categorical_columns=_string_list(data, "categorical_columns", where),
        log_scale_columns=_string_list(data, "log_scale_columns", where),
        label_column=_string(data, "label_column", where),
        task=cast(Task, task),  # checked against Task above
        excluded_columns=_excluded_columns(data.get("excluded_columns"), where),
        weight_column=weight_column,
        missing_values=_missing_values(data.get("missing_values"), where),
        tag_columns=_tag_columns(data.get("tag_columns"), where),
        auxiliary_labels=_auxiliary_labels(data.get("auxiliary_labels"), where),
        source=source,
    )
    _check_roles(spec, where)
    return spec


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".yaml", ".yml"))


def _string(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value


def _string_list(
    data: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = True
) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise SpecError(f"{where}: {key}: expected a list of non-empty column names, got {value!r}")
    if not value and not allow_empty:
        raise SpecError(f"{where}: {key}: expected at least one column")
    duplicates = sorted({item for item in value if value.count(item) > 1})
    if duplicates:
        raise SpecError(f"{where}: {key}: column(s) listed more than once: {', '.join(duplicates)}")
    return tuple(value)


def _excluded_columns(value: Any, where: str) -> tuple[ExcludedColumn, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{where}: excluded_columns: expected a mapping of column name to {{kind, reason}}, "
            f"got {type(value).__name__}"
        )
    columns = []
    for name, entry in value.items():
        key = f"excluded_columns.{name}"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: {key}: expected a mapping with kind and reason, got {entry!r}")
        unknown = [str(item) for item in entry if item not in _EXCLUSION_KEYS]
        if unknown:
            raise SpecError(
                f"{where}: {key}: unknown key(s) {', '.join(unknown)}. Allowed keys: kind, reason"
            )
        kind = entry.get("kind")
        if kind not in get_args(ExclusionKind):
            raise SpecError(
                f"{where}: {key}.kind: expected one of {', '.join(get_args(ExclusionKind))}, got {kind!r}"
            )
        reason = entry.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise SpecError(f"{where}: {key}.reason: expected a non-empty string saying why")
        columns.append(
            ExcludedColumn(name=str(name), kind=cast(ExclusionKind, kind), reason=" ".join(reason.split()))
        )
    return tuple(columns)


def _missing_values(value: Any, where: str) -> tuple[tuple[str, tuple[float | str, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{where}: missing_values: expected a mapping of column name to a list of values, "
            f"got {type(value).__name__}"
        )
    pairs = []
    for name, values in value.items():
        key = f"missing_values.{name}"
        valid = isinstance(values, list) and all(
            isinstance(item, (int, float, str)) and not isinstance(item, bool) for item in values
        )
        if not valid or not values:
            raise SpecError(
                f"{where}: {key}: expected a non-empty list of numbers or strings, got {values!r}"
            )
        pairs.append((str(name), tuple(values)))
    return tuple(pairs)


def _tag_columns(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{where}: tag_columns: expected a mapping of column name to tag separator, "
            f"got {type(value).__name__}"
        )
    columns: dict[str, str] = {}
    for name, separator in value.items():
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"{where}: tag_columns: expected non-empty column names, got {name!r}")
        if not isinstance(separator, str) or not separator:
            raise SpecError(
                f"{where}: tag_columns.{name}: expected a non-empty separator string such as \"; \", "
                f"got {separator!r}"
            )
        columns[name] = separator
    return columns


def _auxiliary_labels(value: Any, where: str) -> dict[str, Task]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"{where}: auxiliary_labels: expected a mapping of column name to task "
            f"({', '.join(get_args(Task))}), got {type(value).__name__}"
        )
    labels: dict[str, Task] = {}
    for name, task in value.items():
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"{where}: auxiliary_labels: expected non-empty column names, got {name!r}")
        if task not in get_args(Task):
            raise SpecError(
                f"{where}: auxiliary_labels.{name}: expected one of {', '.join(get_args(Task))}, got {task!r}"
            )
        labels[name] = cast(Task, task)
    return labels


def _check_roles(spec: DatasetSpec, where: str) -> None:
    """Raise SpecError when one column has two roles or an excluded column is an input."""
    roles: dict[str, list[str]] = {}

    def assign(column: str, role: str) -> None:
        roles.setdefault(column, []).append(role)

    assign(spec.id_column, "id_column")
    assign(spec.image_column, "image_column")
    for column in spec.text_columns:
        assign(column, "text_columns")
    for column in spec.numeric_columns:
        assign(column, "numeric_columns")
    for column in spec.categorical_columns:
        assign(column, "categorical_columns")
    for column in spec.tag_columns:
        # A tag column may also be a text column: its raw string is then both text and tags.
        if column not in spec.text_columns:
            assign(column, "tag_columns")
    assign(spec.label_column, "label_column")
    if spec.weight_column is not None:
        assign(spec.weight_column, "weight_column")
    for column in spec.auxiliary_labels:
        assign(column, "auxiliary_labels")
    clashes = [f"{column} ({' and '.join(names)})" for column, names in roles.items() if len(names) > 1]
    if clashes:
        raise SpecError(f"{where}: column(s) with more than one role: {'; '.join(clashes)}")

    not_numeric = [column for column in spec.log_scale_columns if column not in spec.numeric_columns]
    if not_numeric:
        raise SpecError(
            f"{where}: log_scale_columns: {', '.join(not_numeric)} not in numeric_columns. "
            "Only numeric columns can be log-scaled"
        )

    for name, separator in spec.tag_columns.items():
        # The catalogue collapses whitespace runs in text to one space, so such a separator would
        # no longer match in a column that is also text.
        if name in spec.text_columns and (re.search(r"[^\S ]", separator) or "  " in separator):
            raise SpecError(
                f"{where}: tag_columns.{name}: the column is also a text column, whose whitespace "
                f"runs collapse to one space, so its separator {separator!r} may contain single "
                "spaces but no tabs, newlines or repeated spaces"
            )

    for name, values in spec.missing_values:
        if name not in spec.numeric_columns + spec.categorical_columns:
            raise SpecError(
                f"{where}: missing_values.{name}: only numeric and categorical columns can have "
                "missing-value markers"
            )
        if name in spec.numeric_columns and any(isinstance(item, str) for item in values):
            raise SpecError(f"{where}: missing_values.{name}: a numeric column takes numbers, got {values!r}")

    # The weight column and auxiliary labels may also be listed as excluded (to record why they are
    # not inputs).
    for excluded in spec.excluded_columns:
        used_as = [
            role for role in roles.get(excluded.name, []) if role not in ("weight_column", "auxiliary_labels")
        ]
        if used_as:
            raise SpecError(
                f"{where}: excluded_columns.{excluded.name}: the column is excluded ({excluded.kind}: "
                f"{excluded.reason}) but also listed in {', '.join(used_as)}. Remove it from one of them"
            )
