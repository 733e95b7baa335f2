"""Model-independent inputs and outputs of fusion predictions, without torch.

FusionInputs and FusionPredictions are what every model kind takes and returns: the neural
FusionPredictor (fusion/inference.py) and the boosted BoostedPredictor (fusion/boosted). Serving code
imports them from here, so a predictor process that serves a boosted model never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fusion.attributes import AttributeEncoder, AttributeRow, is_missing_value
from fusion.names import MODALITIES

@dataclass(frozen=True)
class FusionInputs:
    """Inputs of B products before attribute encoding."""

    image: np.ndarray  # (B, Di) float32; rows where present[:, 0] is False are ignored
    text: np.ndarray  # (B, Dt) float32; rows where present[:, 1] is False are ignored
    attributes: Sequence[AttributeRow | None]  # B rows by column name; None where nothing is known
    present: np.ndarray  # (B, 3) bool, columns in MODALITIES order

    @classmethod
    def from_optional(
        cls,
        images: Sequence[np.ndarray | None],
        texts: Sequence[np.ndarray | None],
        attributes: Sequence[AttributeRow | None],
        *,
        image_dim: int,
        text_dim: int,
    ) -> FusionInputs:
        """Build inputs from per-product values, where None marks a missing modality.

        The attributes modality is present for a row with at least one value that is not None, NaN,
        infinite or blank.
        """
        if not len(images) == len(texts) == len(attributes):
            raise ValueError(
                f"Different numbers of images ({len(images)}), texts ({len(texts)}) and attribute rows "
                f"({len(attributes)})."
            )
        present = np.zeros((len(images), len(MODALITIES)), dtype=bool)  # (B, 3)
        present[:, 0] = [vector is not None for vector in images]
        present[:, 1] = [vector is not None for vector in texts]
        present[:, 2] = [
            row is not None and any(not is_missing_value(value) for value in row.values()) for row in attributes
        ]
        return cls(
            image=_stack_optional("image", images, image_dim),
            text=_stack_optional("text", texts, text_dim),
            attributes=list(attributes),
            present=present,
        )


@dataclass(frozen=True)
class FusionPredictions:
    """Predictions for B products, in label units (P(positive) for binary tasks)."""

    quality: np.ndarray  # (B,) float64
    class_probabilities: np.ndarray | None  # (B, 2) float64 [P(negative), P(positive)] for binary; None else
    contributions: np.ndarray  # (B, 3) float64 Shapley values in MODALITIES order
    baseline: np.ndarray  # (B,) float64 prediction with all three modalities missing
    # Per-product weights of the modalities in the prediction with all present modalities (the full
    # subset), in MODALITIES order. A missing modality is weighted through its learned missing vector.
    # The attention and transformer heads have softmax weights, whose rows sum to 1; other heads None.
    modality_weights: np.ndarray | None = None  # (B, 3) float64
    modality_gates: np.ndarray | None = None  # (B, 3) float64 sigmoid gates in (0, 1) of the gated head, else None


class QualityModel(Protocol):
    """Interface of a loaded model of any kind, as the predictor service uses it."""

    model_kind: str
    attribute_encoder: AttributeEncoder

    @property
    def model_version(self) -> str: ...

    @property
    def label_name(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def class_labels(self) -> list[str]: ...

    @property
    def image_model_id(self) -> str: ...

    @property
    def text_model_id(self) -> str: ...

    @property
    def feature_schema(self) -> dict[str, Any]: ...

    @property
    def image_dim(self) -> int: ...

    @property
    def text_dim(self) -> int: ...

    @property
    def attribute_columns(self) -> list[str]: ...

    def predict(self, inputs: FusionInputs) -> FusionPredictions: ...


def check_inputs(inputs: FusionInputs, image_dim: int, text_dim: int, model_version: str) -> np.ndarray:
    """Return the present mask (B, 3) bool after checking the inputs' shapes; raise ValueError otherwise."""
    present = np.asarray(inputs.present, dtype=bool)
    if present.shape != (len(inputs.attributes), len(MODALITIES)):
        raise ValueError(
            f"'present' has shape {present.shape}, expected ({len(inputs.attributes)}, {len(MODALITIES)}) "
            "for one attribute row per product."
        )
    absent_rows = [i for i, row in enumerate(inputs.attributes) if row is None and present[i, 2]]
    if absent_rows:
        raise ValueError(
            f"Rows {absent_rows[:10]} mark the attributes present but have no attribute row. "
            "Pass a row or set present[:, 2] to False."
        )
    for name, values, dim in (("image", inputs.image, image_dim), ("text", inputs.text, text_dim)):
        if values.ndim != 2 or values.shape[1] != dim:
            raise ValueError(
                f"{name.capitalize()} embeddings have shape {values.shape}, expected (B, {dim}) for "
                f"model version {model_version}."
            )
    return present


def _stack_optional(name: str, vectors: Sequence[np.ndarray | None], dim: int) -> np.ndarray:
    stacked = np.zeros((len(vectors), dim), dtype=np.float32)  # (B, D)
    for i, vector in enumerate(vectors):
        if vector is None:
            continue
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (dim,):
            raise ValueError(f"The {name} embedding of row {i} has shape {vector.shape}, expected ({dim},).")
        stacked[i] = vector
    return stacked
