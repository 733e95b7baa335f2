"""Merging of stored features with inline request content into one model input per product.

Inline content overrides stored values field by field. An embedding is computed from inline content
whenever that content is given, even when one is stored, because the inline value is the newer one.
Otherwise the stored embedding is used, and without one the modality is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.schema import FeatureSchema
from features.stored import StoredProduct
from fusion.attributes import is_missing_value
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from services.common.errors import FailedPreconditionError, NotFoundError, quote_for_message
from services.fusion_predictor.request_parsing import ParsedRequest

InputSource = int  # a pq.v1.InputSource value

FEATURE_STORE: InputSource = predictor_pb2.INPUT_SOURCE_FEATURE_STORE
COMPUTED: InputSource = predictor_pb2.INPUT_SOURCE_COMPUTED
REQUEST: InputSource = predictor_pb2.INPUT_SOURCE_REQUEST
MISSING: InputSource = predictor_pb2.INPUT_SOURCE_MISSING


@dataclass
class AssembledProduct:
    """The inputs of one product, with the source of each modality.

    `image_to_compute` / `text_to_compute` hold inline content still to be embedded; the servicer
    embeds them and stores the result in `image` / `text`.
    """

    request: ParsedRequest
    stored: StoredProduct | None
    attributes: dict[str, float | str | None]  # every attribute column of the schema
    attribute_source: InputSource
    image: np.ndarray | None  # (Di,) float32
    image_source: InputSource
    text: np.ndarray | None  # (Dt,) float32
    text_source: InputSource
    image_to_compute: bytes | None = None
    text_to_compute: str | None = None


def compose_text(title: str, description: str | None) -> str:
    """Build a product's text the way training.catalogue does for the training data.

    Training collapses each text column's white-space runs to one space and joins the non-empty
    columns with "\n", title first. The description is everything after the title, so each of
    its lines is treated as one column.
    """
    lines = [title, *(description.split("\n") if description else [])]
    cleaned = (" ".join(line.split()) for line in lines)
    return "\n".join(line for line in cleaned if line)


def assemble(request: ParsedRequest, stored: StoredProduct | None, schema: FeatureSchema) -> AssembledProduct:
    """Merge one request with its stored features; raise NotFoundError for an unknown id without content.

    `stored` is None when the request has no product id or the store could not be read.
    """
    if request.product_id is not None and not request.has_content and (stored is None or not stored.found):
        raise NotFoundError(
            f"{request.field_path}.product_id {quote_for_message(request.product_id)} has no features in "
            "the online store; check the id, or send the product's content inline"
        )

    attributes, attribute_source = _merge_attributes(request, stored, schema)
    product = AssembledProduct(
        request=request,
        stored=stored,
        attributes=attributes,
        attribute_source=attribute_source,
        image=None,
        image_source=MISSING,
        text=None,
        text_source=MISSING,
    )

    if request.image is not None:
        product.image_to_compute = request.image
        product.image_source = COMPUTED
    elif stored is not None and stored.image_embedding is not None:
        product.image = _check_stored(stored, "image", stored.image_embedding, schema.image_embedding_dim)
        product.image_source = FEATURE_STORE

    if request.title is not None:
        product.text_to_compute = compose_text(request.title, request.description)
        product.text_source = COMPUTED
    elif stored is not None and stored.text_embedding is not None:
        product.text = _check_stored(stored, "text", stored.text_embedding, schema.text_embedding_dim)
        product.text_source = FEATURE_STORE

    return product


def _merge_attributes(
    request: ParsedRequest, stored: StoredProduct | None, schema: FeatureSchema
) -> tuple[dict[str, float | str | None], InputSource]:
    stored_values = (stored.attributes if stored is not None else None) or {}
    columns = [*schema.numeric_attributes, *schema.categorical_attributes]
    merged: dict[str, float | str | None] = {column: stored_values.get(column) for column in columns}
    merged.update(request.attributes)

    # Sources follow the encoder's notion of missing (None, NaN, blank), so a stored row of blanks
    # is reported as MISSING, the same as the model treats it. A blank inline category that replaces
    # a stored value changes the model's input, so the source is then REQUEST as well.
    if any(not is_missing_value(value) for value in request.attributes.values()):
        return merged, REQUEST
    if all(is_missing_value(value) for value in merged.values()):
        return merged, MISSING
    if any(not is_missing_value(stored_values.get(name)) for name in request.attributes):
        return merged, REQUEST
    return merged, FEATURE_STORE


def _check_stored(stored: StoredProduct, modality: str, vector: np.ndarray, dimension: int) -> np.ndarray:
    if vector.shape != (dimension,):
        raise FailedPreconditionError(
            f"the stored {modality} embedding of product {stored.product_id!r} has shape {vector.shape}, "
            f"but the fusion checkpoint expects ({dimension},); re-materialise the feature store for "
            "this checkpoint"
        )
    return vector.astype(np.float32, copy=False)
