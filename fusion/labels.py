"""Scaling between label units and model outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from fusion.names import TASKS, Task


@dataclass(frozen=True)
class LabelScaling:
    """Map between label units and model outputs.

    Regression models predict (label - mean) / std. Binary models predict the logit of the positive
    class, so their mean is 0 and std 1, and `to_label_units` applies the sigmoid.
    """

    task: Task
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Task {self.task!r} is not supported. Use one of {list(TASKS)}.")
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Label scaling needs a finite mean and a positive std, got {self.mean} and {self.std}.")

    @classmethod
    def fit(cls, task: Task, labels: np.ndarray) -> LabelScaling:
        """Compute the scaling from training labels (N,), which must be finite, and 0 or 1 for binary."""
        labels = np.asarray(labels, dtype=np.float64)
        if labels.size == 0:
            raise ValueError("Cannot fit label scaling on an empty label array.")
        if not np.isfinite(labels).all():
            raise ValueError(
                f"{int((~np.isfinite(labels)).sum())} of {labels.size} labels are NaN or infinite. "
                "Drop those rows before training."
            )
        if task == "binary":
            invalid = np.unique(labels[(labels != 0) & (labels != 1)])
            if invalid.size:
                raise ValueError(f"Binary labels must be 0 or 1, got the values {invalid[:10].tolist()}.")
            return cls(task="binary")

        std = float(labels.std())
        return cls(task="regression", mean=float(labels.mean()), std=std if std > 1e-12 else 1.0)

    def to_model_targets(self, labels: np.ndarray) -> np.ndarray:
        """Convert labels (N,) to training targets (N,) float32."""
        labels = np.asarray(labels, dtype=np.float64)
        if self.task == "binary":
            return labels.astype(np.float32)
        return ((labels - self.mean) / self.std).astype(np.float32)

    def to_label_units(self, outputs: np.ndarray) -> np.ndarray:
        """Convert model outputs to float64 label units: label values, or P(positive) for binary."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.task == "binary":
            return expit(outputs)
        return outputs * self.std + self.mean
