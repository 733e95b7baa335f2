"""BoostedPredictor: quality predictions and exact Shapley contributions from a boosted checkpoint.

It has the interface of fusion.inference.FusionPredictor, so the gRPC predictor and the main job
serve either kind. The value of a modality subset is the model's prediction with the other
modalities marked missing, which the model learned from its modality-dropout copies. The features
of all 8 subsets of a batch go through the members in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusion.boosted.checkpoint import BoostedBundle, load_boosted_checkpoint
from fusion.boosted.features import ATTRIBUTES, IMAGE, TEXT
from fusion.checkpoint_files import CheckpointMetadata
from fusion.predictions import FusionInputs, FusionPredictions, check_inputs
from fusion.shapley import SUBSETS, shapley_contributions


class BoostedPredictor:
    """A loaded boosted fusion model that turns FusionInputs into FusionPredictions."""

    model_kind = "boosted"

    def __init__(self, bundle: BoostedBundle) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.attribute_encoder = bundle.model.encoder
        self.device = "cpu"

    @classmethod
    def from_checkpoint(cls, directory: Path | str) -> BoostedPredictor:
        return cls(load_boosted_checkpoint(directory))

    @property
    def metadata(self) -> CheckpointMetadata:
        return self.bundle.metadata

    @property
    def model_version(self) -> str:
        return self.metadata.model_version

    @property
    def label_name(self) -> str:
        return self.metadata.label_name

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def class_labels(self) -> list[str]:
        return list(self.metadata.class_labels)

    @property
    def image_model_id(self) -> str:
        return self.metadata.image_model_id

    @property
    def text_model_id(self) -> str:
        return self.metadata.text_model_id

    @property
    def feature_schema(self) -> dict[str, Any]:
        return self.metadata.feature_schema

    @property
    def image_dim(self) -> int:
        return self._projection_dim(self.model.features.image.ridge_coef)

    @property
    def text_dim(self) -> int:
        return self._projection_dim(self.model.features.text.ridge_coef)

    @property
    def attribute_columns(self) -> list[str]:
        return self.attribute_encoder.columns

    @staticmethod
    def _projection_dim(coef: np.ndarray | None) -> int:
        if coef is None:
            raise RuntimeError("the boosted model is not fitted")
        return int(coef.shape[0])

    def predict(self, inputs: FusionInputs, *, chunk_size: int = 4096) -> FusionPredictions:
        """Predict quality, class probabilities, Shapley contributions and baseline for every product.

        Raises ValueError for inputs of the wrong shape and AttributeEncodingError (a ValueError)
        for an attribute value that is not valid.
        """
        present = check_inputs(inputs, self.image_dim, self.text_dim, self.model_version)
        n = len(inputs.attributes)
        values = np.empty((len(SUBSETS), n), dtype=np.float64)  # (8, B)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            values[:, rows] = self._subset_values(
                inputs.image[rows], inputs.text[rows], inputs.attributes[rows], present[rows]
            )
        quality = values[-1]
        class_probabilities = np.stack([1.0 - quality, quality], axis=1) if self.task == "binary" else None
        return FusionPredictions(
            quality=quality,
            class_probabilities=class_probabilities,
            contributions=shapley_contributions(values),
            baseline=values[0],
        )

    def _subset_values(self, image: np.ndarray, text: np.ndarray, attributes: list, present: np.ndarray) -> np.ndarray:
        """Return the prediction (8, B) of every product under every modality subset."""
        features = self.model.features
        b = len(present)
        encoded = self.attribute_encoder.transform(attributes)
        blocks = {
            ATTRIBUTES: (
                features.attribute_block(encoded, present[:, ATTRIBUTES]),
                features.attribute_block(encoded, np.zeros(b, dtype=bool)),
            ),
            IMAGE: (
                features.image.transform(np.where(present[:, IMAGE, None], image, np.nan)),
                None,
            ),
            TEXT: (
                features.text.transform(np.where(present[:, TEXT, None], text, np.nan)),
                None,
            ),
        }
        rows = []
        for subset in SUBSETS:
            parts = []
            for modality in (ATTRIBUTES, IMAGE, TEXT):  # the column order of FusedFeatures
                present_block, missing_block = blocks[modality]
                if subset[modality]:
                    parts.append(present_block)
                elif missing_block is not None:
                    parts.append(missing_block)
                else:
                    parts.append(np.full_like(present_block, np.nan))
            rows.append(np.hstack(parts))
        x = np.vstack(rows)  # (8B, F), subset-major
        return self.model.predict_features(x).reshape(len(SUBSETS), b)
