"""Evaluation metrics for regression and binary classification, in label units.

A metric that is undefined for the given data is NaN: Pearson correlation when either array is
constant, ROC AUC when only one class occurs, and R^2 for fewer than two rows.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn import metrics as sk_metrics

logger = logging.getLogger(__name__)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Return rmse, mae, r2 and pearson of predictions (N,) against labels (N,)."""
    y_true, y_pred = _check_pair(y_true, y_pred)

    r2 = float(sk_metrics.r2_score(y_true, y_pred)) if y_true.size >= 2 else float("nan")
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        pearson = float("nan")
    else:
        pearson = float(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "rmse": float(np.sqrt(sk_metrics.mean_squared_error(y_true, y_pred))),
        "mae": float(sk_metrics.mean_absolute_error(y_true, y_pred)),
        "r2": r2,
        "pearson": pearson,
    }


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """Return accuracy, f1 and roc_auc of positive-class probabilities (N,) against 0/1 labels (N,).

    A product is predicted positive when its probability is at least `threshold`.
    """
    y_true, probability = _check_pair(y_true, probability)
    invalid = np.unique(y_true[(y_true != 0) & (y_true != 1)])
    if invalid.size:
        raise ValueError(f"Binary labels must be 0 or 1, got the values {invalid[:10].tolist()}.")
    if ((probability < 0) | (probability > 1)).any():
        raise ValueError("Probabilities must be in [0, 1]. Pass P(positive), not logits.")

    labels = y_true.astype(np.int64)
    predicted = (probability >= threshold).astype(np.int64)
    if np.unique(labels).size < 2:
        logger.warning("ROC AUC is undefined because only one class occurs among %d labels", labels.size)
        roc_auc = float("nan")
    else:
        roc_auc = float(sk_metrics.roc_auc_score(labels, probability))
    return {
        "accuracy": float(sk_metrics.accuracy_score(labels, predicted)),
        "f1": float(sk_metrics.f1_score(labels, predicted, zero_division=0.0)),
        "roc_auc": roc_auc,
    }


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"Labels and predictions differ in length: {y_true.size} and {y_pred.size}.")
    if y_true.size == 0:
        raise ValueError("Cannot compute metrics on zero rows.")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("Labels and predictions must be finite. Drop rows with NaN or infinite values first.")
    return y_true, y_pred
