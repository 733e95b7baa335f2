"""Boundaries of the predictor's request checks for bad inputs, without servers or models.

The rejections themselves are sent over gRPC in test_bad_input_table.py. These tests pin down the
values on either side of each rule.
"""

from __future__ import annotations

import pytest

from features.schema import FeatureSchema
from features.stored import StoredProduct
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from services.common.errors import InvalidArgumentError
from services.fusion_predictor.assembly import FEATURE_STORE, MISSING, REQUEST, assemble
from services.fusion_predictor.request_parsing import MAX_WRITTEN_PRODUCT_ID_CHARS, parse_request

SCHEMA = FeatureSchema(
    numeric_attributes=["price", "players"],
    categorical_attributes=["category"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)
LOG_SCALE = frozenset({"price"})

Request = predictor_pb2.PredictQualityRequest
Content = predictor_pb2.ProductContent


def with_number(name: str, value: float) -> Request:
    request = Request()
    request.content.attributes[name].number_value = value
    return request


def with_category(value: str) -> Request:
    request = Request()
    request.content.attributes["category"].string_value = value
    return request


def parse(request: Request) -> dict[str, float | str]:
    return parse_request(request, SCHEMA, log_scale_attributes=LOG_SCALE).attributes


@pytest.mark.parametrize("price", [0.0, -0.0, 1e-300, 1e6])
def test_log_scale_zero_or_more_kept(price: float) -> None:
    assert parse(with_number("price", price)) == {"price": price}


@pytest.mark.parametrize("price", [-1e-300, -0.5, -1.0, -1e300])
def test_log_scale_negative_rejected(price: float) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse(with_number("price", price))

    assert raised.value.message.startswith(f"request.content.attributes['price'] is {price:g}, but this")
    assert "leave the attribute out when it is unknown" in raised.value.message


def test_negative_linear_attribute_kept() -> None:
    assert parse(with_number("players", -3.0)) == {"players": -3.0}


def test_negative_price_kept_without_log_scale() -> None:
    # A caller that names no log-scale attributes accepts any finite number.
    parsed = parse_request(with_number("price", -5.0), SCHEMA)

    assert parsed.attributes == {"price": -5.0}


def stored_product(**attributes: float | str | None) -> StoredProduct:
    return StoredProduct(
        product_id="p1",
        attributes=attributes,
        image_embedding=None,
        text_embedding=None,
        image_timestamp=None,
        text_timestamp=None,
    )


@pytest.mark.parametrize(
    ("stored", "source"),
    [
        (None, MISSING),
        ({"price": 10.0, "players": 4.0, "category": None}, FEATURE_STORE),
        ({"price": 10.0, "players": 4.0, "category": "family"}, REQUEST),
        ({"price": None, "players": None, "category": "family"}, MISSING),
    ],
    ids=["nothing-stored", "category-already-missing", "category-replaced", "only-category-stored"],
)
def test_blank_category_source(stored: dict[str, float | str | None] | None, source: int) -> None:
    # A blank inline category is read as missing. When it replaces a stored category, the model's
    # input differs from the stored row, so the attributes' source must not be FEATURE_STORE.
    request = with_category(" ")
    request.product_id = "p1"
    parsed = parse_request(request, SCHEMA, log_scale_attributes=LOG_SCALE)

    product = assemble(parsed, None if stored is None else stored_product(**stored), SCHEMA)

    assert parsed.attributes == {"category": " "}
    assert product.attributes["category"] == " "
    assert product.attribute_source == source


@pytest.mark.parametrize("value", ["never-seen", " family ", "\u200b", "x" * 10_000, "", " \t"])
def test_unknown_or_blank_category_kept(value: str) -> None:
    # Unseen values go to the model's unknown bucket and blank ones count as missing, and parsing
    # keeps both unchanged.
    assert parse(with_category(value)) == {"category": value}


@pytest.mark.parametrize(
    "title",
    [
        "\u200b",
        "\u200c\u200d\u2060\ufeff",
        "\x00",
        "\x7f\x1b",
        "\ue000",
        "\u0301\u0308",
        " \u200b \n",
        "\u00ad",
    ],
    ids=["zero-width-space", "joiners", "nul", "control", "private-use", "combining", "mixed", "soft-hyphen"],
)
def test_invisible_title_rejected(title: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_request(Request(content=Content(title=title)), SCHEMA)

    assert raised.value.message.startswith(f"request.content.title {title!r} contains only white space")


@pytest.mark.parametrize(
    "title", ["a", "\u200bChess\u200b", "é", "e\u0301", "商品", "😀", "42", "?", "\u0903"]
)
def test_visible_title_kept(title: str) -> None:
    assert parse_request(Request(content=Content(title=title)), SCHEMA).title == title


def id_with_content(product_id: str) -> Request:
    return Request(product_id=product_id, content=Content(title="Oak table"))


@pytest.mark.parametrize(
    "product_id", ["p" * MAX_WRITTEN_PRODUCT_ID_CHARS, "produit-é-42", "商品-1", "a b", "x/y:z"]
)
def test_written_id_kept(product_id: str) -> None:
    assert parse_request(id_with_content(product_id), SCHEMA).product_id == product_id


def test_written_id_over_limit_rejected() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_request(id_with_content("p" * (MAX_WRITTEN_PRODUCT_ID_CHARS + 1)), SCHEMA)

    assert "(1,025 characters) is longer than 1,024 characters" in raised.value.message


@pytest.mark.parametrize(
    ("product_id", "code_point", "position"),
    [("\x00", "U+0000", 0), ("a\tb", "U+0009", 1), ("ab\u200b", "U+200B", 2), ("\ufeffab", "U+FEFF", 0)],
)
def test_written_id_invisible_rejected(product_id: str, code_point: str, position: int) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_request(id_with_content(product_id), SCHEMA)

    assert raised.value.message.startswith(
        f"request.product_id {product_id!r} contains the control or format"
    )
    assert f"character {code_point} at position {position};" in raised.value.message


@pytest.mark.parametrize("product_id", ["p" * 100_000, "a\x00b", "ab\u200b"])
def test_looked_up_id_not_limited(product_id: str) -> None:
    # An id sent alone is only read from the store, so an unusual one is not found instead of invalid.
    assert parse_request(Request(product_id=product_id), SCHEMA).product_id == product_id
