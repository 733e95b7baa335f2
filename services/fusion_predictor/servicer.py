"""gRPC servicer of pq.v1.QualityPredictorService.

A call, single or batch, runs each step once for all of its products. It validates the requests,
reads the online store for the product ids and merges stored features with inline content. It then
embeds the inline images and texts (one encoder call each, in parallel), runs one fusion forward
pass, writes the newly computed embeddings back to the store, and builds the responses.

When an encoder is unavailable or too slow, the call fails by default. With
`on_encoder_failure="degrade"` the products are scored without that modality instead, and their
responses are marked degraded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import grpc
import numpy as np

from features.errors import OnlineStoreUnavailableError
from features.online import OnlineFeatureReader
from features.schema import FeatureSchema
from features.stored import StoredProduct
from fusion.predictions import FusionInputs, FusionPredictions, QualityModel
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ServiceError,
    UnavailableError,
    quote_for_message,
)
from services.fusion_predictor.assembly import MISSING, AssembledProduct, assemble
from services.fusion_predictor.encoder_clients import ImageEncoderClient, PendingEmbeddings, TextEncoderClient
from services.fusion_predictor.request_parsing import ParsedRequest, parse_batch, parse_request
from services.fusion_predictor.write_back import EmbeddingWriteBack

logger = logging.getLogger(__name__)

SERVICE_NAME = predictor_pb2.DESCRIPTOR.services_by_name["QualityPredictorService"].full_name

# Modalities in the order of FusionInputs.present columns and of the response's contributions.
_MODALITIES = (predictor_pb2.MODALITY_IMAGE, predictor_pb2.MODALITY_TEXT, predictor_pb2.MODALITY_ATTRIBUTES)

ENCODER_FAILED = predictor_pb2.INPUT_SOURCE_ENCODER_FAILED

EncoderFailurePolicy = Literal["fail", "degrade"]


@dataclass(frozen=True)
class EncoderClients:
    """The encoder clients of the predictor; None where that encoder is not configured."""

    image: ImageEncoderClient | None
    text: TextEncoderClient | None


class QualityPredictorServicer(predictor_grpc.QualityPredictorServiceServicer):
    """Scores products with one fusion model (neural or boosted), reading and writing back the online store."""

    def __init__(
        self,
        predictor: QualityModel,
        schema: FeatureSchema,
        *,
        reader: OnlineFeatureReader,
        write_back: EmbeddingWriteBack | None,
        encoders: EncoderClients,
        max_batch_size: int,
        on_encoder_failure: EncoderFailurePolicy = "fail",
    ) -> None:
        self._predictor = predictor
        self._on_encoder_failure = on_encoder_failure
        self._schema = schema
        self._reader = reader
        self._write_back = write_back
        self._encoders = encoders
        self._max_batch_size = max_batch_size
        self._log_scale_attributes = frozenset(predictor.attribute_encoder.log_scale)

    def PredictQuality(
        self, request: predictor_pb2.PredictQualityRequest, context: grpc.ServicerContext
    ) -> predictor_pb2.PredictQualityResponse:
        parsed = parse_request(request, self._schema, log_scale_attributes=self._log_scale_attributes)
        return self.predict([parsed], _deadline(context))[0]

    def PredictQualityBatch(
        self, request: predictor_pb2.PredictQualityBatchRequest, context: grpc.ServicerContext
    ) -> predictor_pb2.PredictQualityBatchResponse:
        parsed = parse_batch(
            request, self._schema, self._max_batch_size, log_scale_attributes=self._log_scale_attributes
        )
        return predictor_pb2.PredictQualityBatchResponse(responses=self.predict(parsed, _deadline(context)))

    def predict(
        self, requests: Sequence[ParsedRequest], deadline: float | None
    ) -> list[predictor_pb2.PredictQualityResponse]:
        """Score validated requests; `deadline` is the caller's deadline on time.monotonic(), or None."""
        stored, store_read = self._read_store(requests)
        products = [
            assemble(request, stored.get(request.product_id or ""), self._schema) for request in requests
        ]

        self._embed_inline_content(products, deadline)

        inputs = FusionInputs.from_optional(
            [product.image for product in products],
            [product.text for product in products],
            [product.attributes for product in products],
            image_dim=self._schema.image_embedding_dim,
            text_dim=self._schema.text_embedding_dim,
        )
        predictions = self._predictor.predict(inputs)
        _check_finite(products, predictions)

        # Without a successful store read the stored event times are unknown, and the write-back
        # needs them to write newer ones, so it is skipped.
        if self._write_back is not None and store_read:
            self._write_back.write(products)
        return [self._response(products[i], predictions, inputs.present[i], i) for i in range(len(products))]

    def _read_store(self, requests: Sequence[ParsedRequest]) -> tuple[dict[str, StoredProduct], bool]:
        """Read every product id of the call in one store read.

        Returns the stored products by id and whether the read succeeded. When the store is
        unavailable, requests with inline content are still scored from that content alone, but a
        request with only a product id cannot be, and the call fails with UNAVAILABLE.
        """
        product_ids = list(dict.fromkeys(r.product_id for r in requests if r.product_id is not None))
        if not product_ids:
            return {}, True
        try:
            products = self._reader.read(product_ids)
        except OnlineStoreUnavailableError as error:
            id_only = [r for r in requests if r.product_id is not None and not r.has_content]
            if id_only:
                product_id = quote_for_message(id_only[0].product_id or "")
                raise UnavailableError(
                    f"{id_only[0].field_path} gives only product_id {product_id}, and the online store is "
                    f"unavailable: {error.message}"
                ) from error
            logger.warning(
                "online store unavailable, scoring %d request(s) from inline content only: %s",
                len(requests),
                error.message,
            )
            return {}, False
        return {product.product_id: product for product in products}, True

    def _embed_inline_content(self, products: Sequence[AssembledProduct], deadline: float | None) -> None:
        """Embed the inline images and texts of all products, both encoders working in parallel."""
        image_rows = [i for i, product in enumerate(products) if product.image_to_compute is not None]
        text_rows = [i for i, product in enumerate(products) if product.text_to_compute is not None]

        image_client, text_client = self._encoders.image, self._encoders.text
        if image_rows and image_client is None:
            raise _encoder_not_configured("image", products[image_rows[0]], "image")
        if text_rows and text_client is None:
            raise _encoder_not_configured("text", products[text_rows[0]], "title")

        pending_images: PendingEmbeddings | None = None
        pending_texts: PendingEmbeddings | None = None
        # Both calls start before either is awaited, so the two encoders work in parallel.
        if image_rows and image_client is not None:
            pending_images = image_client.submit(
                [products[i].image_to_compute or b"" for i in image_rows],
                [f"{products[i].request.field_path}.content.image" for i in image_rows],
                _remaining_s(deadline),
            )
        if text_rows and text_client is not None:
            pending_texts = text_client.submit(
                [products[i].text_to_compute or "" for i in text_rows],
                [f"{products[i].request.field_path}.content.title" for i in text_rows],
                _remaining_s(deadline),
            )

        if pending_images is not None:
            images = self._await_embeddings(pending_images, len(image_rows))
            for i, vector in zip(image_rows, images, strict=True):
                products[i].image = vector
                if vector is None:
                    products[i].image_source = ENCODER_FAILED
        if pending_texts is not None:
            texts = self._await_embeddings(pending_texts, len(text_rows))
            for i, vector in zip(text_rows, texts, strict=True):
                products[i].text = vector
                if vector is None:
                    products[i].text_source = ENCODER_FAILED

    def _await_embeddings(self, pending: PendingEmbeddings, count: int) -> list[np.ndarray | None]:
        """Return the embeddings of `pending`, each (D,) float32, or None for each when its encoder failed.

        Only an unavailable or timed-out encoder degrades the call, and only with
        on_encoder_failure="degrade". Rejected content, a wrong encoder model and internal errors
        still fail the call, because scoring without the modality would hide them.
        """
        try:
            return list(pending.result())
        except (UnavailableError, DeadlineExceededError) as error:
            if self._on_encoder_failure != "degrade":
                raise
            logger.warning(
                "scoring %d product(s) without the %s modality, whose encoder failed: %s",
                count,
                pending.kind,
                error.message,
            )
            return [None] * count

    def _response(
        self,
        product: AssembledProduct,
        predictions: FusionPredictions,
        present: np.ndarray,  # (3,) bool
        row: int,
    ) -> predictor_pb2.PredictQualityResponse:
        sources = [product.image_source, product.text_source, product.attribute_source]
        # The model decides presence; a source whose value it treats as missing is reported MISSING,
        # unless an encoder failure is the reason.
        sources = [
            source if present[m] or source == ENCODER_FAILED else MISSING for m, source in enumerate(sources)
        ]

        response = predictor_pb2.PredictQualityResponse(
            product_id=product.request.product_id or "",
            quality=float(predictions.quality[row]),
            baseline=float(predictions.baseline[row]),
            model_version=self._predictor.model_version,
            label=self._predictor.label_name,
            degraded=ENCODER_FAILED in sources,
        )
        if predictions.class_probabilities is not None:
            for label, probability in zip(
                self._predictor.class_labels, predictions.class_probabilities[row], strict=True
            ):
                response.class_probabilities.add(label=label, probability=float(probability))
        for m, modality in enumerate(_MODALITIES):
            contribution = response.contributions.add(
                modality=modality, contribution=float(predictions.contributions[row, m]), source=sources[m]
            )
            if predictions.modality_weights is not None:
                contribution.attention_weight = float(predictions.modality_weights[row, m])
            if predictions.modality_gates is not None:
                contribution.gate = float(predictions.modality_gates[row, m])
            if not present[m]:
                response.missing_modalities.append(modality)
        return response


def _check_finite(products: Sequence[AssembledProduct], predictions: FusionPredictions) -> None:
    """Raise instead of returning a NaN or infinite prediction as if it were a score.

    Finite numbers far outside the training range, such as a weight of 1e30, overflow float32 inside
    the model. A request with inline numbers fails with INVALID_ARGUMENT naming them, and any other
    product with INTERNAL, because then its stored features are the cause.
    """
    finite = (
        np.isfinite(predictions.quality)
        & np.isfinite(predictions.baseline)
        & np.isfinite(predictions.contributions).all(axis=1)
    )  # (B,)
    for row in np.flatnonzero(~finite):
        request = products[int(row)].request
        numbers = [
            f"{name!r}={value:g}" for name, value in request.attributes.items() if isinstance(value, float)
        ]
        if numbers:
            raise InvalidArgumentError(
                f"{request.field_path}.content.attributes give numbers the model cannot score, so its "
                f"prediction is not finite: {', '.join(numbers)}; send values in the range of real products"
            )
        product_id = quote_for_message(request.product_id or "")
        raise ServiceError(
            f"the prediction for {request.field_path} (product_id {product_id}) is not finite; its "
            "stored numeric attributes are probably far outside the training range"
        )


def _encoder_not_configured(kind: str, product: AssembledProduct, field: str) -> FailedPreconditionError:
    variable = f"PQ_PREDICTOR_{kind.upper()}_ENCODER_ADDRESS"
    return FailedPreconditionError(
        f"{product.request.field_path}.content.{field} needs the {kind} encoder, but this predictor has "
        f"none configured; set {variable}, or send the request without inline {field}"
    )


def _deadline(context: grpc.ServicerContext) -> float | None:
    """Return the call's deadline on the time.monotonic() clock, or None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
