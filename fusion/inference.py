"""Quality predictions with exact Shapley contributions of the three modalities.

The model's value for a subset S of modalities is its prediction with the modalities outside S
marked missing, so that the learned missing vectors stand in for them. With three modalities all
2^3 = 8 subsets are evaluated in one batched forward pass, and the Shapley value of modality m is

    phi_m = sum over S not containing m of |S|! (3 - |S| - 1)! / 3! * (v(S + {m}) - v(S)).

The contributions then add up to v(all) - v(none), that is quality minus baseline. A modality absent
from the input is missing in every subset, so its contribution is exactly 0.

The gRPC predictor and the offline evaluation both use FusionPredictor, so they give identical numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.batch import FusionBatch
from fusion.checkpoint import CheckpointMetadata, FusionBundle, load_checkpoint
from fusion.device import resolve_device
from fusion.model import MODALITIES
from fusion.predictions import FusionInputs, FusionPredictions, check_inputs
from fusion.shapley import SUBSETS, shapley_contributions


class FusionPredictor:
    """A loaded fusion model that turns FusionInputs into FusionPredictions, in eval mode."""

    model_kind = "neural"

    def __init__(self, bundle: FusionBundle, *, device: torch.device | str = "auto") -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.model = bundle.model.to(self.device).eval()
        self.attribute_encoder = bundle.attribute_encoder

    @classmethod
    def from_checkpoint(cls, directory: Path | str, *, device: torch.device | str = "auto") -> FusionPredictor:
        return cls(load_checkpoint(directory), device=device)

    @property
    def metadata(self) -> CheckpointMetadata:
        return self.bundle.metadata

    @property
    def model_version(self) -> str:
        return self.bundle.metadata.model_version

    @property
    def label_name(self) -> str:
        return self.bundle.metadata.label_name

    @property
    def task(self) -> str:
        return self.bundle.metadata.task

    @property
    def class_labels(self) -> list[str]:
        return list(self.bundle.metadata.class_labels)

    @property
    def image_model_id(self) -> str:
        return self.bundle.metadata.image_model_id

    @property
    def text_model_id(self) -> str:
        return self.bundle.metadata.text_model_id

    @property
    def feature_schema(self) -> dict[str, Any]:
        return self.bundle.metadata.feature_schema

    @property
    def image_dim(self) -> int:
        return self.bundle.config.image_dim

    @property
    def text_dim(self) -> int:
        return self.bundle.config.text_dim

    @property
    def attribute_columns(self) -> list[str]:
        return self.attribute_encoder.columns

    def predict(self, inputs: FusionInputs, *, chunk_size: int = 1024) -> FusionPredictions:
        """Encode the attribute rows and predict as `predict_batch` does.

        Raises ValueError when a present attributes row is None or the inputs have the wrong shape,
        and AttributeEncodingError (a ValueError) for an attribute value that is not valid.
        """
        present = check_inputs(inputs, self.image_dim, self.text_dim, self.model_version)
        attributes = self.attribute_encoder.transform(inputs.attributes)
        batch = FusionBatch.from_numpy(inputs.image, inputs.text, attributes, present)
        return self.predict_batch(batch, chunk_size=chunk_size)

    def predict_batch(self, batch: FusionBatch, *, chunk_size: int = 1024) -> FusionPredictions:
        """Predict quality, class probabilities, Shapley contributions and baseline for every product.

        Each chunk of up to `chunk_size` products is one forward pass over 8 * chunk rows, one row per
        product and modality subset.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
        n = len(batch)
        values = np.empty((len(SUBSETS), n), dtype=np.float64)  # (8, B) label units
        weight_chunks: list[np.ndarray] = []
        gate_chunks: list[np.ndarray] = []
        for start in range(0, n, chunk_size):
            chunk = batch.select(torch.arange(start, min(start + chunk_size, n)))
            chunk_values, chunk_weights, chunk_gates = self._subset_values(chunk)
            values[:, start : start + len(chunk)] = chunk_values
            if chunk_weights is not None:
                weight_chunks.append(chunk_weights)
            if chunk_gates is not None:
                gate_chunks.append(chunk_gates)

        quality = values[-1]  # (B,) full subset, restricted to the present modalities
        baseline = values[0]  # (B,) empty subset
        contributions = shapley_contributions(values)  # (B, 3)

        class_probabilities = None
        if self.task == "binary":
            class_probabilities = np.stack([1.0 - quality, quality], axis=1)  # (B, 2)
        return FusionPredictions(
            quality=quality,
            class_probabilities=class_probabilities,
            contributions=contributions,
            baseline=baseline,
            modality_weights=_concatenate_or_none(weight_chunks),
            modality_gates=_concatenate_or_none(gate_chunks),
        )

    @torch.inference_mode()
    def _subset_values(self, chunk: FusionBatch) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Return the model's value for every modality subset of every product, (8, B) in label units.

        Also returns the head's modality weights (B, 3) and gates (B, 3) for the full subset, or None
        where the head has none.
        """
        chunk = chunk.to(self.device)
        n_subsets = len(SUBSETS)
        b = len(chunk)

        # Repeat the products once per subset, subset-major: row s * B + b is product b under subset s.
        subsets = torch.from_numpy(SUBSETS).to(self.device)  # (8, 3)
        present = (subsets.unsqueeze(1) & chunk.present.unsqueeze(0)).reshape(n_subsets * b, -1)  # (8B, 3)
        repeated = FusionBatch(
            image=chunk.image.repeat(n_subsets, 1),  # (8B, Di)
            text=chunk.text.repeat(n_subsets, 1),  # (8B, Dt)
            numeric=chunk.numeric.repeat(n_subsets, 1),  # (8B, Fn)
            categorical=chunk.categorical.repeat(n_subsets, 1),  # (8B, Fc)
            present=present,
        )

        model_outputs = repeated.run_outputs(self.model)
        outputs = model_outputs.prediction.reshape(n_subsets, b)  # (8, B) standardised labels or logits
        values = self.bundle.metadata.label_scaling.to_label_units(outputs.double().cpu().numpy())

        # The full subset is the last block of B rows.
        weights = _full_subset_rows(model_outputs.modality_weights, b)  # (B, 3) or None
        gates = _full_subset_rows(model_outputs.modality_gates, b)  # (B, 3) or None
        return values, weights, gates


def _full_subset_rows(per_row: torch.Tensor | None, b: int) -> np.ndarray | None:
    if per_row is None:
        return None
    return per_row[-b:].double().cpu().numpy()  # (B, 3)


def _concatenate_or_none(chunks: list[np.ndarray]) -> np.ndarray | None:
    # NOTE: an empty batch has no chunks, so it gets None even from a head with weights.
    if not chunks:
        return None
    return np.concatenate(chunks, axis=0)  # (B, 3)

