"""Names, types and file locations of the product features, shared by training and serving."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from features.errors import FeatureSchemaError

ENTITY_NAME = "product"
JOIN_KEY = "product_id"
TIMESTAMP_COLUMN = "event_timestamp"
FEATURE_SERVICE_NAME = "product_quality"

ATTRIBUTES_VIEW_NAME = "product_attributes"
IMAGE_VIEW_PREFIX = "image_embeddings__"
TEXT_VIEW_PREFIX = "text_embeddings__"

IMAGE_EMBEDDING_FIELD = "image_embedding"
IMAGE_MODEL_ID_FIELD = "image_model_id"
TEXT_EMBEDDING_FIELD = "text_embedding"
TEXT_MODEL_ID_FIELD = "text_model_id"

# Column names that an attribute may not take, because the sources or the views already use them.
RESERVED_NAMES = frozenset(
    {
        JOIN_KEY,
        TIMESTAMP_COLUMN,
        IMAGE_EMBEDDING_FIELD,
        IMAGE_MODEL_ID_FIELD,
        TEXT_EMBEDDING_FIELD,
        TEXT_MODEL_ID_FIELD,
    }
)

SCHEMA_FILE_NAME = "feature_schema.json"

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_MAX_SLUG_STEM = 40


@functools.lru_cache(maxsize=256)
def model_slug(model_id: str) -> str:
    """Turn an encoder model id into a feature view name suffix.

    The suffix is the id lower-cased with every run of other characters than [a-z0-9] replaced by
    "_" (at most 40 characters), then "_" and the first 8 hex digits of the id's SHA-256. The hash
    makes the suffix differ for any two distinct ids, even ids that clean to the same stem.
    """
    if not model_id:
        raise FeatureSchemaError("model id is empty; expected the encoder's model_id string")
    stem = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:_MAX_SLUG_STEM].rstrip("_")
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:8]
    return f"{stem}_{digest}" if stem else digest


@dataclass(frozen=True)
class FeatureSchema:
    """Attribute columns and encoder identities that fix the feature views of one trained model."""

    numeric_attributes: list[str]
    categorical_attributes: list[str]
    image_model_id: str
    text_model_id: str
    image_embedding_dim: int
    text_embedding_dim: int

    def __post_init__(self) -> None:
        names = [*self.numeric_attributes, *self.categorical_attributes]
        if not names:
            # FeastFeatureReader takes a view's event time from its first feature, so the
            # attributes view needs at least one.
            raise FeatureSchemaError("the feature schema lists no attributes; expected at least one column")
        for name in names:
            if not _IDENTIFIER.match(name):
                raise FeatureSchemaError(
                    f"attribute name {name!r} is invalid; use a letter followed by letters, digits or '_'"
                )
            if name in RESERVED_NAMES:
                raise FeatureSchemaError(
                    f"attribute name {name!r} is reserved; rename the column "
                    f"(reserved: {', '.join(sorted(RESERVED_NAMES))})"
                )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise FeatureSchemaError(f"attribute names are listed more than once: {duplicates}")
        for field_name in ("image_embedding_dim", "text_embedding_dim"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise FeatureSchemaError(f"{field_name} must be a positive integer, got {value!r}")
        # model_slug rejects an empty model id.
        model_slug(self.image_model_id)
        model_slug(self.text_model_id)

    @property
    def attribute_names(self) -> list[str]:
        """Numeric then categorical attribute names, the field order of `product_attributes`."""
        return [*self.numeric_attributes, *self.categorical_attributes]

    @property
    def attributes_view_name(self) -> str:
        """Name of the attributes feature view."""
        return ATTRIBUTES_VIEW_NAME

    @property
    def image_view_name(self) -> str:
        """Name of the image embedding view, unique to `image_model_id`."""
        return IMAGE_VIEW_PREFIX + model_slug(self.image_model_id)

    @property
    def text_view_name(self) -> str:
        """Name of the text embedding view, unique to `text_model_id`."""
        return TEXT_VIEW_PREFIX + model_slug(self.text_model_id)

    @property
    def view_names(self) -> list[str]:
        """Names of the three feature views: attributes, image, text."""
        return [self.attributes_view_name, self.image_view_name, self.text_view_name]

    def source_paths(self, data_dir: Path) -> dict[str, Path]:
        """Return the parquet source file of each feature view, keyed by view name."""
        return {name: Path(data_dir) / f"{name}.parquet" for name in self.view_names}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict that `from_dict` turns back into an equal schema."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        """Build a schema from `to_dict` output; raise FeatureSchemaError on missing or extra keys."""
        expected = set(cls.__dataclass_fields__)
        missing = sorted(expected - set(data))
        unknown = sorted(set(data) - expected)
        if missing or unknown:
            raise FeatureSchemaError(f"invalid feature schema: missing keys {missing}, unknown keys {unknown}")
        return cls(
            numeric_attributes=list(data["numeric_attributes"]),
            categorical_attributes=list(data["categorical_attributes"]),
            image_model_id=str(data["image_model_id"]),
            text_model_id=str(data["text_model_id"]),
            image_embedding_dim=data["image_embedding_dim"],
            text_embedding_dim=data["text_embedding_dim"],
        )

    def save(self, path: Path) -> None:
        """Write the schema as JSON to `path`, creating the parent directory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureSchema:
        """Read a schema written by `save`; raise FeatureSchemaError when the file is missing or invalid."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FeatureSchemaError(
                f"feature schema file {path} not found; training writes it next to the offline "
                "features, or set PQ_FEATURE_SCHEMA_PATH to its location"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise FeatureSchemaError(f"feature schema file {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise FeatureSchemaError(f"feature schema file {path} must contain a JSON object")
        return cls.from_dict(data)
