"""Tests of the predictor's request validation, content merging and settings, without servers or models."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from features.schema import FeatureSchema
from features.stored import StoredProduct
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.settings import SettingsError
from services.fusion_predictor.assembly import assemble, compose_text
from services.fusion_predictor.request_parsing import parse_batch, parse_request
from services.fusion_predictor.settings import PredictorSettings

SCHEMA = FeatureSchema(
    numeric_attributes=["price", "players"],
    categorical_attributes=["category"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)


def request(
    product_id: str = "",
    *,
    image: bytes | None = None,
    title: str | None = None,
    description: str | None = None,
    attributes: dict[str, predictor_pb2.AttributeValue] | None = None,
) -> predictor_pb2.PredictQualityRequest:
    message = predictor_pb2.PredictQualityRequest(product_id=product_id)
    if image is None and title is None and description is None and not attributes:
        return message
    message.content.CopyFrom(
        predictor_pb2.ProductContent(image=image, title=title, description=description, attributes=attributes)
    )
    return message


def number(value: float) -> predictor_pb2.AttributeValue:
    return predictor_pb2.AttributeValue(number_value=value)


def string(value: str) -> predictor_pb2.AttributeValue:
    return predictor_pb2.AttributeValue(string_value=value)


def stored(product_id: str = "p1", **overrides: object) -> StoredProduct:
    values: dict[str, object] = {
        "product_id": product_id,
        "attributes": {"price": 10.0, "players": 4.0, "category": "a"},
        "image_embedding": np.ones(4, dtype=np.float32),
        "text_embedding": np.ones(3, dtype=np.float32),
        "image_timestamp": datetime(2025, 1, 1, tzinfo=UTC),
        "text_timestamp": datetime(2025, 1, 1, tzinfo=UTC),
    }
    values.update(overrides)
    return StoredProduct(**values)  # type: ignore[arg-type]


def test_parse_id_only() -> None:
    parsed = parse_request(request("p1"), SCHEMA)

    assert parsed.product_id == "p1"
    assert not parsed.has_content
    assert parsed.field_path == "request"


def test_parse_full_content() -> None:
    parsed = parse_request(
        request(
            image=b"\x89PNG",
            title="Chess",
            description="Abstract strategy",
            attributes={"price": number(12.5), "category": string("classic")},
        ),
        SCHEMA,
    )

    assert parsed.product_id is None
    assert parsed.image == b"\x89PNG"
    assert parsed.title == "Chess"
    assert parsed.description == "Abstract strategy"
    assert parsed.attributes == {"price": 12.5, "category": "classic"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (request(), "request is empty"),
        (predictor_pb2.PredictQualityRequest(content=predictor_pb2.ProductContent()), "request is empty"),
        (request(title="   \n"), "request.content.title is empty or only white space"),
        (request(title=""), "request.content.title is empty or only white space"),
        (request(description="no title"), "request.content.description is given without content.title"),
        (
            request(attributes={"colour": string("red"), "age": number(3)}),
            "unknown attribute names 'age', 'colour'",
        ),
        (request(attributes={"price": predictor_pb2.AttributeValue()}), "attributes['price'] has neither"),
        (request(attributes={"price": string("12")}), "attributes['price'] is numeric"),
        (request(attributes={"category": number(1.0)}), "attributes['category'] is categorical"),
        (request(attributes={"price": number(math.nan)}), "attributes['price'] is nan"),
        (request(attributes={"players": number(math.inf)}), "attributes['players'] is inf"),
    ],
)
def test_parse_rejects_invalid(message: predictor_pb2.PredictQualityRequest, expected: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_request(message, SCHEMA)

    assert expected in raised.value.message


def test_parse_batch_names_index() -> None:
    batch = predictor_pb2.PredictQualityBatchRequest(requests=[request("p1"), request("p2"), request()])

    with pytest.raises(InvalidArgumentError) as raised:
        parse_batch(batch, SCHEMA, max_batch_size=10)

    assert raised.value.message.startswith("requests[2] is empty")


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "requests is empty"), (4, "more than this server's maximum")]
)
def test_parse_batch_size_limits(count: int, expected: str) -> None:
    batch = predictor_pb2.PredictQualityBatchRequest(requests=[request(f"p{i}") for i in range(count)])

    with pytest.raises(InvalidArgumentError) as raised:
        parse_batch(batch, SCHEMA, max_batch_size=3)

    assert expected in raised.value.message


def test_parse_batch_field_paths() -> None:
    batch = predictor_pb2.PredictQualityBatchRequest(requests=[request("p1"), request("p2")])

    parsed = parse_batch(batch, SCHEMA, max_batch_size=2)

    assert [item.field_path for item in parsed] == ["requests[0]", "requests[1]"]


@pytest.mark.parametrize(
    ("title", "description", "expected"),
    [
        ("Chess", None, "Chess"),
        ("Chess", "", "Chess"),
        ("  Chess \t set ", "Abstract  strategy", "Chess set\nAbstract strategy"),
        ("Phone", "Fast charging\n\nSpecs: 8 GB ", "Phone\nFast charging\nSpecs: 8 GB"),
    ],
)
def test_compose_text_matches_catalogue(title: str, description: str | None, expected: str) -> None:
    assert compose_text(title, description) == expected


def test_assemble_stored_only() -> None:
    product = assemble(parse_request(request("p1"), SCHEMA), stored(), SCHEMA)

    assert product.image_source == predictor_pb2.INPUT_SOURCE_FEATURE_STORE
    assert product.text_source == predictor_pb2.INPUT_SOURCE_FEATURE_STORE
    assert product.attribute_source == predictor_pb2.INPUT_SOURCE_FEATURE_STORE
    assert product.image_to_compute is None
    assert product.text_to_compute is None
    assert product.attributes == {"price": 10.0, "players": 4.0, "category": "a"}


def test_assemble_inline_overrides_stored() -> None:
    parsed = parse_request(
        request("p1", image=b"img", title="New title", attributes={"price": number(99.0)}), SCHEMA
    )

    product = assemble(parsed, stored(), SCHEMA)

    assert product.image_to_compute == b"img"
    assert product.image_source == predictor_pb2.INPUT_SOURCE_COMPUTED
    assert product.text_to_compute == "New title"
    assert product.text_source == predictor_pb2.INPUT_SOURCE_COMPUTED
    assert product.attribute_source == predictor_pb2.INPUT_SOURCE_REQUEST
    assert product.attributes == {"price": 99.0, "players": 4.0, "category": "a"}


def test_assemble_missing_embeddings() -> None:
    product = assemble(
        parse_request(request("p1"), SCHEMA), stored(image_embedding=None, text_embedding=None), SCHEMA
    )

    assert product.image is None
    assert product.image_source == predictor_pb2.INPUT_SOURCE_MISSING
    assert product.text_source == predictor_pb2.INPUT_SOURCE_MISSING


def test_assemble_blank_stored_attributes_missing() -> None:
    blank = {"price": None, "players": None, "category": None}

    product = assemble(parse_request(request("p1"), SCHEMA), stored(attributes=blank), SCHEMA)

    assert product.attribute_source == predictor_pb2.INPUT_SOURCE_MISSING


def test_assemble_unknown_id_not_found() -> None:
    nothing = stored("ghost", attributes=None, image_embedding=None, text_embedding=None)

    with pytest.raises(NotFoundError) as raised:
        assemble(parse_request(request("ghost"), SCHEMA), nothing, SCHEMA)

    assert "'ghost'" in raised.value.message


def test_assemble_unknown_id_with_content() -> None:
    nothing = stored("ghost", attributes=None, image_embedding=None, text_embedding=None)

    product = assemble(parse_request(request("ghost", title="Chess"), SCHEMA), nothing, SCHEMA)

    assert product.text_to_compute == "Chess"
    assert product.attribute_source == predictor_pb2.INPUT_SOURCE_MISSING


def test_settings_defaults() -> None:
    settings = PredictorSettings.from_env({})

    assert settings.address == "127.0.0.1:50050"
    assert settings.encoder_timeout_s == 5.0
    assert settings.max_batch_size == 1000
    assert settings.write_back is True
    assert settings.image_encoder_address == ""


def test_settings_model_path_unset() -> None:
    with pytest.raises(SettingsError) as raised:
        PredictorSettings.from_env({}).require_model_path()

    assert "PQ_PREDICTOR_MODEL_PATH" in str(raised.value)


def test_settings_model_path_invalid(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        PredictorSettings.from_env({"PQ_PREDICTOR_MODEL_PATH": str(tmp_path / "absent")})

    assert "PQ_PREDICTOR_MODEL_PATH" in str(raised.value)


def test_settings_from_environment(tmp_path: Path) -> None:
    settings = PredictorSettings.from_env(
        {
            "PQ_PREDICTOR_MODEL_PATH": str(tmp_path),
            "PQ_PREDICTOR_WRITE_BACK": "false",
            "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": "127.0.0.1:50052",
        }
    )

    assert settings.require_model_path() == tmp_path
    assert settings.write_back is False
    assert settings.text_encoder_address == "127.0.0.1:50052"


def test_settings_log_level_invalid() -> None:
    with pytest.raises(SettingsError) as raised:
        PredictorSettings.from_env({"PQ_PREDICTOR_LOG_LEVEL": "loud"})

    assert "PQ_PREDICTOR_LOG_LEVEL" in str(raised.value)
