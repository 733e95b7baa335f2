"""Supervised projections of one embedding into a few features that trees can split on.

Trees split poorly on hundreds of embedding dimensions. EmbeddingProjection turns a vector into
  - a ridge-regression prediction of the label from the whole vector, and
  - per k in `neighbours`, the cosine-similarity-weighted mean label of the k most similar training
    products, plus the highest similarity (how close the nearest known product is).
Training rows get out-of-fold values (ridge from inner folds, kNN leaving the row itself out), so
the trees never see a feature made from the row's own label. At serving, an exact copy of a
training vector (cosine similarity above EXACT_MATCH) is left out of its neighbours the same way.
A missing embedding gives NaN features, which the trees route as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

RIDGE_ALPHAS = np.logspace(-2, 5, 15)
EXACT_MATCH = 1.0 - 1e-6
_CHUNK = 2048  # query rows per similarity matrix block


@dataclass
class EmbeddingProjection:
    """Ridge and kNN features of one modality's embedding, fitted on training rows."""

    neighbours: tuple[int, ...]
    ridge_coef: np.ndarray | None = None  # (D,) float64
    ridge_intercept: float = 0.0
    # The kNN index: unit vectors (N, D) float32 and labels (N,) of the training rows. Without
    # neighbour counts it is empty, (0, D) and (0,), so the model file stays small.
    index_vectors: np.ndarray | None = None
    index_labels: np.ndarray | None = None

    @property
    def feature_names(self) -> list[str]:
        names = ["ridge"]
        for k in self.neighbours:
            names += [f"knn{k}_mean", f"knn{k}_max_similarity"]
        return names

    def fit(self, vectors: np.ndarray, labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
        """Fit on the present rows of `vectors` (N, D) (NaN rows are missing); return their out-of-fold features (N, F)."""
        present = ~np.isnan(vectors).any(axis=1)  # (N,)
        features = np.full((len(vectors), len(self.feature_names)), np.nan)  # (N, F)
        rows = np.flatnonzero(present)
        if rows.size < max(folds, max(self.neighbours, default=1) + 1):
            raise ValueError(
                f"an embedding projection needs at least {max(folds, max(self.neighbours, default=1) + 1)} "
                f"rows with the embedding, got {rows.size}"
            )
        x = vectors[rows].astype(np.float64)  # (P, D)
        y = np.asarray(labels, dtype=np.float64)[rows]  # (P,)

        # 1. Out-of-fold ridge predictions for the training rows, then the ridge of all rows for serving.
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        for fit_rows, held_rows in splitter.split(x):
            ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(x[fit_rows], y[fit_rows])
            features[rows[held_rows], 0] = ridge.predict(x[held_rows])
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
        self.ridge_coef = np.asarray(ridge.coef_, dtype=np.float64)
        self.ridge_intercept = float(ridge.intercept_)

        # 2. The kNN index; training rows leave themselves out of their own neighbours.
        indexed = slice(None) if self.neighbours else slice(0, 0)
        self.index_vectors = _unit(x[indexed]).astype(np.float32)
        self.index_labels = y[indexed]
        if self.neighbours:
            features[rows, 1:] = self._knn(self.index_vectors, leave_out_self=True)
        return features

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Return the features (B, F) of `vectors` (B, D); NaN rows of `vectors` give NaN rows."""
        if self.ridge_coef is None or self.index_vectors is None:
            raise RuntimeError("EmbeddingProjection.transform called before fit or load")
        present = ~np.isnan(vectors).any(axis=1)
        features = np.full((len(vectors), len(self.feature_names)), np.nan)
        if present.any():
            x = vectors[present].astype(np.float64)
            features[present, 0] = x @ self.ridge_coef + self.ridge_intercept
            if self.neighbours:
                features[present, 1:] = self._knn(_unit(x).astype(np.float32), leave_out_self=False)
        return features

    def _knn(self, queries: np.ndarray, *, leave_out_self: bool) -> np.ndarray:
        """kNN features (Q, 2K) of unit `queries` (Q, D) against the index."""
        assert self.index_vectors is not None and self.index_labels is not None
        n_index = len(self.index_vectors)
        out = np.empty((len(queries), 2 * len(self.neighbours)))
        for start in range(0, len(queries), _CHUNK):
            block = queries[start : start + _CHUNK]
            similarity = block @ self.index_vectors.T  # (q, N)
            if leave_out_self:
                similarity[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
            else:
                similarity[similarity > EXACT_MATCH] = -np.inf
            for j, k in enumerate(self.neighbours):
                k = min(k, n_index - 1)
                nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (q, k)
                sims = np.take_along_axis(similarity, nearest, axis=1)  # (q, k)
                weights = np.maximum(sims, 0.0) + 1e-6
                weights[~np.isfinite(sims)] = 0.0
                labels = self.index_labels[nearest]
                out[start : start + len(block), 2 * j] = (labels * weights).sum(1) / np.maximum(weights.sum(1), 1e-12)
                out[start : start + len(block), 2 * j + 1] = np.where(np.isfinite(sims), sims, -1.0).max(axis=1)
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return the fitted state as named arrays for an .npz file."""
        if self.ridge_coef is None or self.index_vectors is None or self.index_labels is None:
            raise RuntimeError("EmbeddingProjection.arrays called before fit")
        return {
            f"{prefix}_ridge_coef": self.ridge_coef,
            f"{prefix}_ridge_intercept": np.array([self.ridge_intercept]),
            f"{prefix}_index_vectors": self.index_vectors,
            f"{prefix}_index_labels": self.index_labels,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, neighbours: Sequence[int]) -> EmbeddingProjection:
        """Rebuild a projection from `arrays` output."""
        return cls(
            neighbours=tuple(int(k) for k in neighbours),
            ridge_coef=np.asarray(arrays[f"{prefix}_ridge_coef"], dtype=np.float64),
            ridge_intercept=float(arrays[f"{prefix}_ridge_intercept"][0]),
            index_vectors=np.asarray(arrays[f"{prefix}_index_vectors"], dtype=np.float32),
            index_labels=np.asarray(arrays[f"{prefix}_index_labels"], dtype=np.float64),
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
