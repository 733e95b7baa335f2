"""Tests of features.schema: names, slugs and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from features.errors import FeatureSchemaError
from features.schema import FeatureSchema, model_slug


def test_slug_is_name_safe() -> None:
    slug = model_slug("efficientnet_lite0.imagenet.224@0123ABCD")
    assert slug.startswith("efficientnet_lite0_imagenet_224_0123abcd_")
    assert slug.replace("_", "").isalnum()


def test_slug_differs_for_ids_that_clean_alike() -> None:
    assert model_slug("model.a") != model_slug("model_a")
    assert model_slug("model.a") != model_slug("MODEL.A")


def test_slug_rejects_empty_id() -> None:
    with pytest.raises(FeatureSchemaError, match="empty"):
        model_slug("")


def test_view_names_follow_model_ids(helpers: Any) -> None:
    old = helpers.make_schema("resnet18.imagenet.224@11111111")
    new = helpers.make_schema("resnet18.imagenet.224@22222222")
    assert old.attributes_view_name == new.attributes_view_name == "product_attributes"
    assert old.image_view_name != new.image_view_name
    assert old.image_view_name.startswith("image_embeddings__resnet18_imagenet_224_11111111_")
    assert old.text_view_name == new.text_view_name


def test_schema_dict_round_trip(schema: FeatureSchema) -> None:
    assert FeatureSchema.from_dict(schema.to_dict()) == schema


def test_schema_file_round_trip(schema: FeatureSchema, tmp_path: Path) -> None:
    path = tmp_path / "nested" / "feature_schema.json"
    schema.save(path)
    assert FeatureSchema.load(path) == schema


def test_schema_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FeatureSchemaError, match="not found.*PQ_FEATURE_SCHEMA_PATH"):
        FeatureSchema.load(tmp_path / "absent.json")


def test_schema_file_with_unknown_key(schema: FeatureSchema, tmp_path: Path) -> None:
    data = schema.to_dict() | {"surprise": 1}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FeatureSchemaError, match="surprise"):
        FeatureSchema.load(path)


@pytest.mark.parametrize(
    ("numeric", "categorical", "message"),
    [
        (["price", "price"], [], "more than once"),
        (["price"], ["product_id"], "reserved"),
        (["1price"], [], "invalid"),
        (["price-usd"], [], "invalid"),
        ([], [], "no attributes"),
    ],
)
def test_schema_rejects_bad_attributes(numeric: list[str], categorical: list[str], message: str) -> None:
    with pytest.raises(FeatureSchemaError, match=message):
        FeatureSchema(numeric, categorical, "image@1", "text@1", 4, 4)


def test_schema_rejects_bad_dimension() -> None:
    with pytest.raises(FeatureSchemaError, match="image_embedding_dim"):
        FeatureSchema(["price"], [], "image@1", "text@1", 0, 4)
