"""Feast objects of the product features: the entity, one parquet source and view per feature
group, and the feature service that the predictor reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Bytes, Float64, String

from features.schema import (
    ENTITY_NAME,
    FEATURE_SERVICE_NAME,
    IMAGE_EMBEDDING_FIELD,
    IMAGE_MODEL_ID_FIELD,
    JOIN_KEY,
    TEXT_EMBEDDING_FIELD,
    TEXT_MODEL_ID_FIELD,
    TIMESTAMP_COLUMN,
    FeatureSchema,
)

# A ttl of 0 means that the stored values never expire: Feast 0.67 reads timedelta(0) as "lives
# forever". A product's attributes and embeddings stay valid until they are overwritten, and the
# encoder model id in each view name keeps vectors of another encoder apart.
NO_EXPIRY = timedelta(0)

OWNER = "product-quality"


@dataclass(frozen=True)
class FeatureDefinitions:
    """The Feast objects of one feature schema, by role."""

    product: Entity
    attributes_source: FileSource
    image_source: FileSource
    text_source: FileSource
    attributes_view: FeatureView
    image_view: FeatureView
    text_view: FeatureView
    service: FeatureService

    def as_list(self) -> list[Any]:
        """Return all objects in the order FeatureStore.apply accepts them."""
        return [
            self.product,
            self.attributes_source,
            self.image_source,
            self.text_source,
            self.attributes_view,
            self.image_view,
            self.text_view,
            self.service,
        ]


def _parquet_source(view_name: str, path: Path, description: str) -> FileSource:
    return FileSource(
        name=f"{view_name}_source",
        path=str(path),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_COLUMN,
        description=description,
        owner=OWNER,
    )


def _embedding_view(
    *,
    name: str,
    modality: str,
    model_id: str,
    dim: int,
    embedding_field: str,
    model_id_field: str,
    product: Entity,
    source: FileSource,
) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[product],
        ttl=NO_EXPIRY,
        schema=[
            Field(name=JOIN_KEY, dtype=String, description="Product id, the entity join key."),
            Field(
                name=embedding_field,
                dtype=Bytes,
                description=(
                    f"{modality.capitalize()} embedding ({dim},) as packed little-endian float32 "
                    f"({4 * dim} bytes)."
                ),
            ),
            Field(
                name=model_id_field,
                dtype=String,
                description=f"Model id of the {modality} encoder that produced the embedding.",
            ),
        ],
        source=source,
        online=True,
        description=(
            f"{modality.capitalize()} embeddings of encoder {model_id}. A different encoder gets a "
            "view of its own, so its vectors are never served in place of these."
        ),
        tags={"model_id": model_id, "embedding_dim": str(dim), "dtype": "float32le", "modality": modality},
        owner=OWNER,
    )


def build_feature_objects(schema: FeatureSchema, data_dir: Path) -> FeatureDefinitions:
    """Build the entity, sources, views and service of `schema`, reading parquet files in `data_dir`."""
    paths = schema.source_paths(Path(data_dir).resolve())

    # Product: the entity every view is keyed by.
    product = Entity(
        name=ENTITY_NAME,
        join_keys=[JOIN_KEY],
        value_type=ValueType.STRING,
        description="A catalogue product, identified by its product id string.",
        owner=OWNER,
    )

    # Attributes: one field per catalogue column, numeric as Float64 and categorical as String.
    attributes_source = _parquet_source(
        schema.attributes_view_name,
        paths[schema.attributes_view_name],
        "Catalogue attributes per product, one row per product and event time.",
    )
    attribute_fields = [Field(name=JOIN_KEY, dtype=String, description="Product id, the entity join key.")]
    attribute_fields += [
        Field(name=name, dtype=Float64, description=f"Numeric attribute {name!r}; null when missing.")
        for name in schema.numeric_attributes
    ]
    attribute_fields += [
        Field(name=name, dtype=String, description=f"Categorical attribute {name!r}; null when missing.")
        for name in schema.categorical_attributes
    ]
    attributes_view = FeatureView(
        name=schema.attributes_view_name,
        entities=[product],
        ttl=NO_EXPIRY,
        schema=attribute_fields,
        source=attributes_source,
        online=True,
        description="Numeric and categorical catalogue attributes of a product.",
        tags={
            "numeric_attributes": ",".join(schema.numeric_attributes),
            "categorical_attributes": ",".join(schema.categorical_attributes),
        },
        owner=OWNER,
    )

    # Embeddings: one view per encoder model id, each with its own source file.
    image_source = _parquet_source(
        schema.image_view_name,
        paths[schema.image_view_name],
        f"Image embeddings of encoder {schema.image_model_id}; products without a usable image have no row.",
    )
    image_view = _embedding_view(
        name=schema.image_view_name,
        modality="image",
        model_id=schema.image_model_id,
        dim=schema.image_embedding_dim,
        embedding_field=IMAGE_EMBEDDING_FIELD,
        model_id_field=IMAGE_MODEL_ID_FIELD,
        product=product,
        source=image_source,
    )
    text_source = _parquet_source(
        schema.text_view_name,
        paths[schema.text_view_name],
        f"Text embeddings of encoder {schema.text_model_id}; products without text have no row.",
    )
    text_view = _embedding_view(
        name=schema.text_view_name,
        modality="text",
        model_id=schema.text_model_id,
        dim=schema.text_embedding_dim,
        embedding_field=TEXT_EMBEDDING_FIELD,
        model_id_field=TEXT_MODEL_ID_FIELD,
        product=product,
        source=text_source,
    )

    # Service: everything the fusion predictor reads for one product.
    service = FeatureService(
        name=FEATURE_SERVICE_NAME,
        features=[attributes_view, image_view, text_view],
        description="Attributes and image and text embeddings that the fusion predictor reads.",
        tags={"image_model_id": schema.image_model_id, "text_model_id": schema.text_model_id},
        owner=OWNER,
    )

    return FeatureDefinitions(
        product=product,
        attributes_source=attributes_source,
        image_source=image_source,
        text_source=text_source,
        attributes_view=attributes_view,
        image_view=image_view,
        text_view=text_view,
        service=service,
    )


def build_feature_definitions(schema: FeatureSchema, data_dir: Path) -> list[Any]:
    """Build the Feast objects of `schema` as a list for FeatureStore.apply."""
    return build_feature_objects(schema, data_dir).as_list()
