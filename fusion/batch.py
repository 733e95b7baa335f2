"""Model inputs for a batch of products, as tensors in the order FusionModel takes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusion.attributes import EncodedAttributes
from fusion.model import MODALITIES, FusionModel, FusionOutputs


@dataclass(frozen=True)
class FusionBatch:
    """Inputs of N products. Rows of an absent modality contain zeros."""

    image: torch.Tensor  # (N, Di) float32
    text: torch.Tensor  # (N, Dt) float32
    numeric: torch.Tensor  # (N, Fn) float32
    categorical: torch.Tensor  # (N, Fc) int64
    present: torch.Tensor  # (N, 3) bool, columns in MODALITIES order

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @classmethod
    def from_numpy(
        cls,
        image: np.ndarray,  # (N, Di)
        text: np.ndarray,  # (N, Dt)
        attributes: EncodedAttributes,
        present: np.ndarray,  # (N, 3) bool
    ) -> FusionBatch:
        """Build a batch from arrays, zeroing absent rows.

        Raises ValueError when the row counts differ or a present embedding has a NaN or infinite
        value. Absent rows may contain anything, for example NaN for an image that failed to decode.
        """
        n = image.shape[0]
        present = np.asarray(present, dtype=bool)
        counts = {
            "image": image.shape[0],
            "text": text.shape[0],
            "attributes": len(attributes),
            "present": present.shape[0],
        }
        if len(set(counts.values())) != 1:
            raise ValueError(f"Fusion inputs have different row counts: {counts}.")
        if present.shape != (n, len(MODALITIES)):
            raise ValueError(f"'present' has shape {present.shape}, expected {(n, len(MODALITIES))}.")

        image = _zero_absent_rows("image", image, present[:, 0])
        text = _zero_absent_rows("text", text, present[:, 1])
        return cls(
            image=torch.from_numpy(image),
            text=torch.from_numpy(text),
            numeric=torch.from_numpy(np.ascontiguousarray(attributes.numeric, dtype=np.float32)),
            categorical=torch.from_numpy(np.ascontiguousarray(attributes.categorical, dtype=np.int64)),
            present=torch.from_numpy(present.copy()),
        )

    def to(self, device: torch.device | str) -> FusionBatch:
        return FusionBatch(
            image=self.image.to(device),
            text=self.text.to(device),
            numeric=self.numeric.to(device),
            categorical=self.categorical.to(device),
            present=self.present.to(device),
        )

    def select(self, index: torch.Tensor) -> FusionBatch:
        """Return the rows at `index` (an int64 index tensor or a bool mask)."""
        return FusionBatch(
            image=self.image[index],
            text=self.text[index],
            numeric=self.numeric[index],
            categorical=self.categorical[index],
            present=self.present[index],
        )

    def run(self, model: FusionModel) -> torch.Tensor:
        """Run the model on this batch and return its outputs as a (N,) tensor."""
        return model(self.image, self.text, self.numeric, self.categorical, self.present).squeeze(-1)

    def run_outputs(self, model: FusionModel) -> FusionOutputs:
        """Run the model on this batch and return all its outputs (prediction (N, 1), weights, ...)."""
        return model.forward_outputs(self.image, self.text, self.numeric, self.categorical, self.present)


def _zero_absent_rows(name: str, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float32, copy=True)  # (N, D)
    if values.ndim != 2:
        raise ValueError(f"'{name}' embeddings must be a 2-D array (N, D), got shape {values.shape}.")
    values[~present] = 0.0

    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"'{name}' embeddings of rows {bad_rows[:10].tolist()} are marked present but contain NaN or "
            "infinite values; mark them absent or recompute the embeddings."
        )
    return values
