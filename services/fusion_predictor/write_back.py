"""Write-back of embeddings computed from inline content to the online store.

A later request by product id then finds the embedding in the store instead of needing the content
again. Only requests with a product id are written. A write-back failure is logged and does not
fail the prediction, which has already been made.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np

from features.errors import FeatureStoreError
from features.online import EmbeddingWriter
from services.common.errors import ServiceError
from services.fusion_predictor.assembly import COMPUTED, AssembledProduct

logger = logging.getLogger(__name__)

# EmbeddingWriter.write_image_embeddings or write_text_embeddings: (ids, vectors (N, D), previous times).
_WriteFunction = Callable[[Sequence[str], np.ndarray, Sequence[datetime | None]], object]


class EmbeddingWriteBack:
    """Selects the newly computed embeddings of a call and writes them with one EmbeddingWriter."""

    def __init__(self, writer: EmbeddingWriter) -> None:
        self._writer = writer

    def write(self, products: Sequence[AssembledProduct]) -> None:
        """Write the computed image and text embeddings of the products that have a product id.

        When a call contains the same product id more than once, its last request wins.
        """
        images: dict[str, tuple[np.ndarray, datetime | None]] = {}
        texts: dict[str, tuple[np.ndarray, datetime | None]] = {}
        for product in products:
            product_id = product.request.product_id
            if product_id is None:
                continue
            stored = product.stored
            if product.image_source == COMPUTED and product.image is not None:
                images[product_id] = (product.image, stored.image_timestamp if stored else None)
            if product.text_source == COMPUTED and product.text is not None:
                texts[product_id] = (product.text, stored.text_timestamp if stored else None)

        if images:
            self._write("image", images, self._writer.write_image_embeddings)
        if texts:
            self._write("text", texts, self._writer.write_text_embeddings)

    @staticmethod
    def _write(kind: str, rows: dict[str, tuple[np.ndarray, datetime | None]], write: _WriteFunction) -> None:
        product_ids = list(rows)
        vectors = np.stack([rows[product_id][0] for product_id in product_ids])  # (N, D)
        previous = [rows[product_id][1] for product_id in product_ids]
        try:
            write(product_ids, vectors, previous)
        # OnlineStoreUnavailableError (Redis) is a ServiceError; Feast's SQLite store raises sqlite3 errors.
        except (FeatureStoreError, ServiceError, sqlite3.Error, OSError) as error:
            logger.error(
                "write-back of %d %s embedding(s) failed, the predictions were still returned; "
                "products %s: %s",
                len(product_ids),
                kind,
                ", ".join(product_ids[:10]) + (" ..." if len(product_ids) > 10 else ""),
                error,
            )
            return
        logger.debug("wrote back %d %s embedding(s)", len(product_ids), kind)
