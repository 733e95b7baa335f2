"""Experiment models on text embeddings from an encoder fine-tuned on each fold's training rows.

`FineTunedTextModel.fit` fine-tunes the text backbone on the training rows only, replaces the
stored text embeddings of those rows with the fine-tuned encoder's, and fits a downstream
experiment model on them. `predict` re-embeds the rows it is given with the same encoder, so
held-out labels never reach the encoder.

NOTE: the training rows' fine-tuned embeddings are in-sample, because the encoder was trained on
those rows' labels. A downstream model therefore gets text features that fit the training labels
more closely than they fit held-out rows. This includes the boosted head's out-of-fold ridge and
kNN projections, since only the projections are out of fold, not the encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from encoders.text.encoder import TextEncoder
from training.baselines import ExperimentModel
from training.experiment_data import ExperimentData
from training.finetune import FineTuneResult, TextFineTuneConfig, embed_in_batches, fine_tune_text_encoder

logger = logging.getLogger(__name__)


def joined_texts(data: ExperimentData) -> list[str]:
    """Return each product's text as the catalogue builds it: the non-empty text columns, one per line."""
    texts = []
    for row in data.texts.itertuples(index=False):
        texts.append("\n".join(part for part in row if isinstance(part, str) and part))
    return texts


def with_text_embeddings(data: ExperimentData, encoder: TextEncoder) -> ExperimentData:
    """Return `data` with its text embeddings (N, D) recomputed by `encoder`.

    Rows whose stored text embedding is missing stay missing, so a product without text, and
    `data.without("text")`, keep their meaning.
    """
    vectors = embed_in_batches(encoder, joined_texts(data))  # (N, D)
    missing = np.isnan(data.text).all(axis=1)
    vectors[missing] = np.nan
    return replace(data, text=vectors)


def fine_tune_on(data: ExperimentData, config: TextFineTuneConfig) -> FineTuneResult:
    """Fine-tune the text backbone on the rows of `data` that have a text embedding and non-empty text."""
    texts = joined_texts(data)
    usable = np.array([bool(text) for text in texts]) & ~np.isnan(data.text).all(axis=1)
    if not usable.all():
        logger.info("fine-tuning leaves out %d of %d rows without text", int((~usable).sum()), len(texts))
    # NOTE: sample weights (data.weights) are not used by the fine-tuning loss.
    return fine_tune_text_encoder(
        [text for text, keep in zip(texts, usable, strict=True) if keep], data.labels[usable], data.task, config
    )


class FineTunedTextModel:
    """Experiment model: fine-tune the text encoder on the training rows, then fit `downstream` on its embeddings."""

    def __init__(
        self, downstream: Callable[[], ExperimentModel], config: TextFineTuneConfig | None = None
    ) -> None:
        self.downstream_factory = downstream
        self.config = config or TextFineTuneConfig()
        self.encoder: TextEncoder | None = None
        self.downstream: ExperimentModel | None = None
        self.fine_tune: FineTuneResult | None = None

    def fit(self, data: ExperimentData) -> None:
        self.fine_tune = fine_tune_on(data, self.config)
        self.encoder = self.fine_tune.encoder
        self.downstream = self.downstream_factory()
        self.downstream.fit(with_text_embeddings(data, self.encoder))

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.encoder is None or self.downstream is None:
            raise RuntimeError("predict called before fit")
        return self.downstream.predict(with_text_embeddings(data, self.encoder))
