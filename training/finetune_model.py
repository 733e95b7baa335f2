"""Experiment models on text or image embeddings from an encoder fine-tuned on each fold's training rows.

`FineTunedTextModel.fit` and `FineTunedImageModel.fit` fine-tune their backbone on the training
rows only, replace the stored embeddings of those rows with the fine-tuned encoder's, and fit a
downstream experiment model on them. `predict` re-embeds the rows it is given with the same
encoder, so held-out labels never reach the encoder.

NOTE: the training rows' fine-tuned embeddings are in-sample, because the encoder was trained on
those rows' labels. A downstream model therefore gets features that fit the training labels
more closely than they fit held-out rows. This includes the boosted head's out-of-fold ridge and
kNN projections, since only the projections are out of fold, not the encoder.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import torch

from encoders.text.encoder import TextEncoder
from training.baselines import ExperimentModel
from training.experiment_data import ExperimentData
from training.finetune import FineTuneResult, TextFineTuneConfig, embed_in_batches, fine_tune_text_encoder
from training.finetune_image import ImageFineTuneConfig, ImageFineTuneResult, fine_tune_image_encoder
from training.image_network import TrunkFeatures

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


class _FineTunedEncoderModel(ABC):
    """Experiment model: fine-tune an encoder on the training rows, then fit `downstream` on its embeddings.

    Subclasses fine-tune one modality's encoder and re-embed rows with it.
    """

    def __init__(self, downstream: Callable[[], ExperimentModel]) -> None:
        self.downstream_factory = downstream
        self.downstream: ExperimentModel | None = None

    def fit(self, data: ExperimentData) -> None:
        self._fine_tune(data)
        self.downstream = self.downstream_factory()
        self.downstream.fit(self._with_embeddings(data))

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.downstream is None:
            raise RuntimeError("predict called before fit")
        return self.downstream.predict(self._with_embeddings(data))

    @abstractmethod
    def _fine_tune(self, data: ExperimentData) -> None:
        """Fine-tune the encoder on the rows of `data`."""

    @abstractmethod
    def _with_embeddings(self, data: ExperimentData) -> ExperimentData:
        """Return `data` with this modality's embeddings recomputed by the fine-tuned encoder."""


class FineTunedTextModel(_FineTunedEncoderModel):
    """Experiment model: fine-tune the text encoder on the training rows, then fit `downstream` on its embeddings."""

    def __init__(
        self, downstream: Callable[[], ExperimentModel], config: TextFineTuneConfig | None = None
    ) -> None:
        super().__init__(downstream)
        self.config = config or TextFineTuneConfig()
        self.encoder: TextEncoder | None = None
        self.fine_tune: FineTuneResult | None = None

    def _fine_tune(self, data: ExperimentData) -> None:
        self.fine_tune = fine_tune_on(data, self.config)
        self.encoder = self.fine_tune.encoder

    def _with_embeddings(self, data: ExperimentData) -> ExperimentData:
        if self.encoder is None:
            raise RuntimeError("predict called before fit")
        return with_text_embeddings(data, self.encoder)


def image_keys(data: ExperimentData, trunk: TrunkFeatures) -> tuple[list[str], np.ndarray]:
    """Return the product ids of `data` whose image can be re-embedded, and that mask (N,) bool.

    A row qualifies when it has a stored image embedding and `trunk` has its resized image.
    """
    stored = ~np.isnan(data.image).all(axis=1)  # (N,)
    loaded = np.array([product_id in trunk.images for product_id in data.product_ids], dtype=bool)
    if (stored & ~loaded).any():
        logger.warning(
            "%d of %d rows have a stored image embedding but no resized image, so their fine-tuned "
            "image embedding is marked missing",
            int((stored & ~loaded).sum()), len(data),
        )
    usable = stored & loaded
    return [str(product_id) for product_id in data.product_ids[usable]], usable


def with_image_embeddings(
    data: ExperimentData, result: ImageFineTuneResult, trunk: TrunkFeatures
) -> ExperimentData:
    """Return `data` with its image embeddings (N, 1280) recomputed by the fine-tuned network.

    Rows without a stored image embedding or a resized image get an all-NaN row, so a product
    without an image, and `data.without("image")`, keep their meaning.
    """
    keys, usable = image_keys(data, trunk)
    vectors = np.full((len(data), result.network.spec.embedding_dim), np.nan, dtype=np.float32)  # (N, 1280)
    if keys:
        vectors[usable] = result.embed(trunk, keys)
    return replace(data, image=vectors)


def fine_tune_image_on(
    data: ExperimentData, trunk: TrunkFeatures, config: ImageFineTuneConfig
) -> ImageFineTuneResult:
    """Fine-tune the image backbone on the rows of `data` that have a stored embedding and a resized image."""
    keys, usable = image_keys(data, trunk)
    if not usable.all():
        logger.info(
            "image fine-tuning leaves out %d of %d rows without an image", int((~usable).sum()), len(data)
        )
    # NOTE: sample weights (data.weights) are not used by the fine-tuning loss.
    return fine_tune_image_encoder(keys, data.labels[usable], data.task, trunk, config)


class FineTunedImageModel(_FineTunedEncoderModel):
    """Experiment model: fine-tune the image encoder on training rows and fit `downstream` on its embeddings.

    `images` maps product ids to images resized once (training.image_augment.load_resized_images).
    Pass one `trunk` (from `config.trunk_features(images)`) to every fold's model, so that each
    frozen-trunk output is computed once for all folds.
    """

    def __init__(
        self,
        downstream: Callable[[], ExperimentModel],
        images: Mapping[str, torch.Tensor],
        config: ImageFineTuneConfig | None = None,
        *,
        trunk: TrunkFeatures | None = None,
    ) -> None:
        super().__init__(downstream)
        self.config = config or ImageFineTuneConfig()
        if trunk is not None and trunk.images is not images:
            raise ValueError(
                "trunk was made for another images mapping. Pass the mapping it was made for, or no trunk"
            )
        self.trunk = trunk or self.config.trunk_features(images)
        self.fine_tune: ImageFineTuneResult | None = None

    def _fine_tune(self, data: ExperimentData) -> None:
        self.fine_tune = fine_tune_image_on(data, self.trunk, self.config)

    def _with_embeddings(self, data: ExperimentData) -> ExperimentData:
        if self.fine_tune is None:
            raise RuntimeError("predict called before fit")
        return with_image_embeddings(data, self.fine_tune, self.trunk)
