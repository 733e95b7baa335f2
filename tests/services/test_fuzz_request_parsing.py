"""Property-based tests of the predictor's request validation, with hypothesis.

Generated PredictQualityRequest messages carry arbitrary Unicode ids and titles, attribute maps with
any names and values (NaN, infinities, negative and huge numbers, blank strings), and random image
bytes. Validation must either return a ParsedRequest whose values the model can use, or raise an
InvalidArgumentError whose message starts with the request field it is about. No other exception
may escape. The examples are derandomized, so every run tries the same inputs.
"""

from __future__ import annotations

import math
import re
import unicodedata

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.schema import FeatureSchema
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from services.common.errors import InvalidArgumentError, ServiceError
from services.fusion_predictor.request_parsing import (
    MAX_WRITTEN_PRODUCT_ID_CHARS,
    ParsedRequest,
    parse_batch,
    parse_request,
)

SCHEMA = FeatureSchema(
    numeric_attributes=["price", "players"],
    categorical_attributes=["category"],
    image_model_id="image-test@00000000",
    text_model_id="text-test@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)
LOG_SCALE = frozenset({"price"})
ATTRIBUTE_NAMES = [*SCHEMA.numeric_attributes, *SCHEMA.categorical_attributes]

# Messages quote at most five request values, each through quote_for_message: 80 characters, which
# repr writes as up to 10 characters each ("\U00018cd6"). So a message stays this short however large
# the request is.
MAX_MESSAGE_CHARS = 8000

FUZZ_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Request = predictor_pb2.PredictQualityRequest
Value = predictor_pb2.AttributeValue

# Strings a client may send by mistake: blank, invisible or combining-only text, and control bytes.
TRICKY_TEXTS = [
    "",
    " ",
    "\t\n",
    "\u200b",
    "\u200b\u200d\ufeff",
    "\x00",
    "a\x00b",
    "\u0301",
    "\ue000",
    "\u2028",
]


def long_texts(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """One character repeated, cheaper to generate than random text of that length."""
    return st.builds(
        lambda character, count: character * count,
        st.characters(),
        st.integers(min_value=min_size, max_value=max_size),
    )


TEXTS = st.one_of(st.text(max_size=30), st.sampled_from(TRICKY_TEXTS), long_texts(90, 200))
PRODUCT_IDS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(TRICKY_TEXTS),
    long_texts(MAX_WRITTEN_PRODUCT_ID_CHARS - 2, MAX_WRITTEN_PRODUCT_ID_CHARS + 2),
)
NUMBERS = st.one_of(
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1.0, 1e308, -1e308, 5e-324]),
)
ATTRIBUTE_VALUES = st.one_of(
    NUMBERS.map(lambda number: Value(number_value=number)),
    TEXTS.map(lambda text: Value(string_value=text)),
    st.just(Value()),
)
ATTRIBUTE_KEYS = st.one_of(st.sampled_from(ATTRIBUTE_NAMES), st.text(max_size=12))


@st.composite
def contents(draw: st.DrawFn) -> predictor_pb2.ProductContent:
    content = predictor_pb2.ProductContent(image=draw(st.binary(max_size=64)))
    title = draw(st.none() | TEXTS)
    if title is not None:
        content.title = title
    description = draw(st.none() | TEXTS)
    if description is not None:
        content.description = description
    for name, value in draw(st.dictionaries(ATTRIBUTE_KEYS, ATTRIBUTE_VALUES, max_size=4)).items():
        content.attributes[name].CopyFrom(value)
    return content


@st.composite
def requests(draw: st.DrawFn) -> Request:
    request = Request(product_id=draw(PRODUCT_IDS))
    content = draw(st.none() | contents())
    if content is not None:
        request.content.CopyFrom(content)
    return request


def field_named(message: str, request: Request, field_path: str) -> bool:
    """True when `message` starts with a field of `request` under `field_path`."""
    escaped = re.escape(field_path)
    if re.match(
        rf"{escaped}( is empty|\.product_id |\.content\.(title|description) |\.content\.attributes has )",
        message,
    ):
        return True
    prefix = f"{field_path}.content.attributes["
    return any(message.startswith(f"{prefix}{name!r}]") for name in request.content.attributes)


def assert_usable(parsed: ParsedRequest, request: Request) -> None:
    """Check that every value of an accepted request is one the model can read as given."""
    assert parsed.product_id == (request.product_id or None)
    assert parsed.product_id is not None or parsed.has_content
    if parsed.product_id is not None and parsed.has_content:
        assert len(parsed.product_id) <= MAX_WRITTEN_PRODUCT_ID_CHARS
        assert not any(unicodedata.category(character) in ("Cc", "Cf") for character in parsed.product_id)
    if parsed.title is not None:
        assert parsed.title.strip()
        dropped = ("Cc", "Cf", "Co", "Mn")
        assert any(not c.isspace() and unicodedata.category(c) not in dropped for c in parsed.title)
    if parsed.description is not None:
        assert parsed.title is not None
    assert set(parsed.attributes) <= set(ATTRIBUTE_NAMES)
    for name, value in parsed.attributes.items():
        if name in SCHEMA.numeric_attributes:
            assert isinstance(value, float)
            assert math.isfinite(value)
            assert name not in LOG_SCALE or value >= 0
        else:
            assert isinstance(value, str)


def parse_or_error(request: Request, field_path: str) -> ParsedRequest | InvalidArgumentError:
    """Parse one request. Return the error instead of raising it, after checking its shape."""
    try:
        return parse_request(request, SCHEMA, field_path, log_scale_attributes=LOG_SCALE)
    except ServiceError as error:
        assert isinstance(error, InvalidArgumentError), f"{type(error).__name__}: {error.message}"
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field_named(error.message, request, field_path), error.message
        assert len(error.message) <= MAX_MESSAGE_CHARS, error.message[:200]
        return error


@FUZZ_SETTINGS
@given(request=requests())
def test_request_parsed_or_field_named(request: Request) -> None:
    outcome = parse_or_error(request, "request")

    if isinstance(outcome, ParsedRequest):
        assert_usable(outcome, request)


@FUZZ_SETTINGS
@given(request=requests())
def test_request_parsed_after_round_trip(request: Request) -> None:
    # A server parses the serialized request again, and both copies must be judged alike.
    received = Request.FromString(request.SerializeToString())

    original = parse_or_error(request, "request")
    reparsed = parse_or_error(received, "request")

    assert type(original) is type(reparsed)
    if isinstance(original, InvalidArgumentError):
        assert isinstance(reparsed, InvalidArgumentError)
        assert original.message == reparsed.message


@settings(FUZZ_SETTINGS, max_examples=200)
@given(items=st.lists(requests(), max_size=6), max_batch_size=st.integers(min_value=1, max_value=5))
def test_batch_names_first_invalid_index(items: list[Request], max_batch_size: int) -> None:
    batch = predictor_pb2.PredictQualityBatchRequest(requests=items)
    outcomes = [parse_or_error(item, f"requests[{index}]") for index, item in enumerate(items)]
    first_error = next((outcome for outcome in outcomes if isinstance(outcome, InvalidArgumentError)), None)

    if not items:
        with pytest.raises(InvalidArgumentError, match="^requests is empty"):
            parse_batch(batch, SCHEMA, max_batch_size, log_scale_attributes=LOG_SCALE)
    elif len(items) > max_batch_size:
        with pytest.raises(InvalidArgumentError, match=f"^requests contains {len(items)} requests"):
            parse_batch(batch, SCHEMA, max_batch_size, log_scale_attributes=LOG_SCALE)
    elif first_error is not None:
        with pytest.raises(InvalidArgumentError) as raised:
            parse_batch(batch, SCHEMA, max_batch_size, log_scale_attributes=LOG_SCALE)
        assert raised.value.message == first_error.message
    else:
        parsed = parse_batch(batch, SCHEMA, max_batch_size, log_scale_attributes=LOG_SCALE)
        assert [item.field_path for item in parsed] == [f"requests[{index}]" for index in range(len(items))]


# Values a careful client sends: every one of them must be accepted unchanged.
VISIBLE_TEXTS = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=30
).filter(lambda text: text.strip())
PRINTABLE_IDS = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=MAX_WRITTEN_PRODUCT_ID_CHARS
)


@FUZZ_SETTINGS
@given(
    product_id=st.none() | PRINTABLE_IDS,
    title=VISIBLE_TEXTS,
    description=st.none() | st.text(max_size=30),
    price=st.floats(min_value=0, max_value=1e6),
    players=st.floats(min_value=-1e6, max_value=1e6),
    category=VISIBLE_TEXTS,
    image=st.binary(min_size=1, max_size=32),
)
def test_valid_request_kept(
    product_id: str | None,
    title: str,
    description: str | None,
    price: float,
    players: float,
    category: str,
    image: bytes,
) -> None:
    content = predictor_pb2.ProductContent(image=image, title=title, description=description)
    content.attributes["price"].number_value = price
    content.attributes["players"].number_value = players
    content.attributes["category"].string_value = category

    parsed = parse_request(
        Request(product_id=product_id or "", content=content), SCHEMA, log_scale_attributes=LOG_SCALE
    )

    assert parsed.product_id == product_id
    assert parsed.image == image
    assert parsed.title == title
    assert parsed.description == description
    assert parsed.attributes == {"price": price, "players": players, "category": category}
