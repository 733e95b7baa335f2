"""Validation of PredictQuality requests into plain Python values.

Every error is an InvalidArgumentError whose message starts with the request field it is about,
for example `requests[3].content.attributes['price']`, so a client can find the bad value.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field

from features.schema import FeatureSchema
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from services.common.errors import InvalidArgumentError, quote_for_message
from services.common.text_checks import has_embeddable_text

AttributeScalar = float | str

# An error message lists at most this many unknown attribute names, then only their count.
_MAX_LISTED_NAMES = 5

# Maximum length in characters of a product id sent together with inline content. The predictor may
# write the embeddings it computes for such a request back to the online store under this id, and
# the limit keeps a client from creating megabyte-sized keys there. An id sent alone is only looked
# up, so it is not limited, and an overlong one is simply not found.
MAX_WRITTEN_PRODUCT_ID_CHARS = 1024

# Unicode general categories that control (Cc) and format (Cf) characters belong to. Format
# characters include the zero-width space and joiners, so two ids that print the same can differ.
_INVISIBLE_ID_CATEGORIES = frozenset({"Cc", "Cf"})


@dataclass(frozen=True)
class ParsedRequest:
    """One validated request; `None` means the request did not give that value."""

    field_path: str  # "request" for PredictQuality, "requests[i]" for PredictQualityBatch
    product_id: str | None
    image: bytes | None
    title: str | None
    description: str | None
    attributes: dict[str, AttributeScalar] = field(default_factory=dict)

    @property
    def has_content(self) -> bool:
        """True when the request gives at least one inline value."""
        return self.image is not None or self.title is not None or bool(self.attributes)


def parse_request(
    request: predictor_pb2.PredictQualityRequest,
    schema: FeatureSchema,
    field_path: str = "request",
    *,
    log_scale_attributes: Collection[str] = (),
) -> ParsedRequest:
    """Validate one request against the model's feature schema; raise InvalidArgumentError.

    `log_scale_attributes` are the numeric attributes the model reads through log1p (the attribute
    encoder's `log_scale`). A negative value of one of them is rejected, because the model would
    treat it as missing while the response reported it as given.
    """
    product_id = request.product_id or None
    if request.HasField("content"):
        content = request.content
        image = bytes(content.image) if content.image else None
        title = _parse_title(content, field_path)
        description = content.description if content.HasField("description") else None
        attributes = _parse_attributes(content, schema, field_path, log_scale_attributes)
    else:
        image, title, description, attributes = None, None, None, {}

    if description is not None and title is None:
        # The store keeps only the text embedding, not the stored title, so a description alone
        # cannot be combined into the "title\ndescription" text the model was trained on.
        raise InvalidArgumentError(
            f"{field_path}.content.description is given without content.title; the text embedding "
            "is computed from title and description together, so send the title as well"
        )

    parsed = ParsedRequest(field_path, product_id, image, title, description, attributes)
    if product_id is None and not parsed.has_content:
        raise InvalidArgumentError(
            f"{field_path} is empty: set product_id to score a stored product, or content "
            "(image, title, attributes) to score inline content"
        )
    if product_id is not None and parsed.has_content:
        _check_written_product_id(product_id, field_path)
    return parsed


def parse_batch(
    request: predictor_pb2.PredictQualityBatchRequest,
    schema: FeatureSchema,
    max_batch_size: int,
    *,
    log_scale_attributes: Collection[str] = (),
) -> list[ParsedRequest]:
    """Validate a batch request and each of its requests; errors name the index `requests[i]`."""
    count = len(request.requests)
    if count == 0:
        raise InvalidArgumentError("requests is empty; send at least one PredictQualityRequest")
    if count > max_batch_size:
        raise InvalidArgumentError(
            f"requests contains {count} requests, more than this server's maximum batch size "
            f"{max_batch_size}; split the batch into smaller calls"
        )
    return [
        parse_request(item, schema, f"requests[{index}]", log_scale_attributes=log_scale_attributes)
        for index, item in enumerate(request.requests)
    ]


def _check_written_product_id(product_id: str, field_path: str) -> None:
    """Reject a product id that the predictor must not store: overlong, or with invisible characters."""
    if len(product_id) > MAX_WRITTEN_PRODUCT_ID_CHARS:
        raise InvalidArgumentError(
            f"{field_path}.product_id {quote_for_message(product_id)} is longer than "
            f"{MAX_WRITTEN_PRODUCT_ID_CHARS:,} characters, the maximum for a product id sent with content, "
            "because the predictor may store the embeddings it computes under that id; send a shorter id"
        )
    for position, character in enumerate(product_id):
        if unicodedata.category(character) in _INVISIBLE_ID_CATEGORIES:
            raise InvalidArgumentError(
                f"{field_path}.product_id {quote_for_message(product_id)} contains the control or "
                f"format character U+{ord(character):04X} at position {position}; a product id sent "
                "with content may be stored, so it must not contain invisible characters"
            )


def _parse_title(content: predictor_pb2.ProductContent, field_path: str) -> str | None:
    if not content.HasField("title"):
        return None
    if not content.title.strip():
        raise InvalidArgumentError(
            f"{field_path}.content.title is empty or only white space; leave it unset when there is no title"
        )
    if not has_embeddable_text(content.title):
        raise InvalidArgumentError(
            f"{field_path}.content.title {quote_for_message(content.title)} contains only white space and "
            "control, zero-width, private-use or combining characters, which the text encoder drops; "
            "leave it unset when there is no title"
        )
    return content.title


def _parse_attributes(
    content: predictor_pb2.ProductContent,
    schema: FeatureSchema,
    field_path: str,
    log_scale_attributes: Collection[str],
) -> dict[str, AttributeScalar]:
    numeric = set(schema.numeric_attributes)
    categorical = set(schema.categorical_attributes)
    unknown = sorted(name for name in content.attributes if name not in numeric and name not in categorical)
    if unknown:
        listed = ", ".join(quote_for_message(name) for name in unknown[:_MAX_LISTED_NAMES])
        if len(unknown) > _MAX_LISTED_NAMES:
            listed += f" and {len(unknown) - _MAX_LISTED_NAMES} more"
        known = ", ".join(repr(name) for name in [*schema.numeric_attributes, *schema.categorical_attributes])
        raise InvalidArgumentError(
            f"{field_path}.content.attributes has unknown attribute names {listed}; "
            f"the model's attributes are {known}"
        )

    attributes: dict[str, AttributeScalar] = {}
    for name in sorted(content.attributes):
        value = content.attributes[name]
        location = f"{field_path}.content.attributes[{name!r}]"
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidArgumentError(f"{location} has neither number_value nor string_value set")
        if name in numeric:
            attributes[name] = _parse_number(value, location, log_scale=name in log_scale_attributes)
        else:
            attributes[name] = _parse_category(value, location)
    return attributes


def _parse_number(value: predictor_pb2.AttributeValue, location: str, *, log_scale: bool) -> float:
    if value.WhichOneof("kind") != "number_value":
        given = quote_for_message(value.string_value)
        raise InvalidArgumentError(
            f"{location} is numeric but string_value {given} was given; send number_value"
        )
    number = float(value.number_value)
    if not math.isfinite(number):
        raise InvalidArgumentError(
            f"{location} is {number}, but numbers must be finite; leave the attribute out when it is unknown"
        )
    if log_scale and number < 0:
        # Training reads a negative value of a log-scale column (a price, a count) as missing.
        raise InvalidArgumentError(
            f"{location} is {number:g}, but this attribute is read on a log scale and must be 0 or "
            "more; leave the attribute out when it is unknown"
        )
    return number


def _parse_category(value: predictor_pb2.AttributeValue, location: str) -> str:
    if value.WhichOneof("kind") != "string_value":
        raise InvalidArgumentError(
            f"{location} is categorical but number_value {value.number_value!r} was given; send string_value"
        )
    # A blank string is kept: the model reads it as missing, so it marks a stored value as unknown.
    return value.string_value
