"""BoostedFusionModel: gradient-boosted trees on fused attributes and embedding projections.

Fitting runs as visible steps:
  1. project each embedding to ridge and kNN features (out of fold for the training rows);
  2. build the fused feature matrix (fusion/boosted/features.py);
  3. hold out a share of rows for early stopping;
  4. modality dropout: append copies of a share of rows with one modality marked missing, so the
     trees learn what to predict without it (the Shapley subsets and products without an image
     rely on this);
  5. fit every member (LightGBM, CatBoost) and average their predictions.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fusion.attributes import AttributeEncoder, EncodedAttributes
from fusion.boosted.config import BoostedConfig
from fusion.boosted.features import ATTRIBUTES, IMAGE, TEXT, FusedFeatures
from fusion.boosted.members import MEMBER_TYPES, CatBoostMember, LightGBMMember
from fusion.boosted.projections import EmbeddingProjection

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "projections.npz"


def available_threads() -> int:
    """Return the number of cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class BoostedFusionModel:
    """Fused features plus an average of boosted members; predicts label units (P(positive) for binary)."""

    def __init__(self, config: BoostedConfig, encoder: AttributeEncoder, task: str, *, seed: int = 0) -> None:
        if task not in ("regression", "binary"):
            raise ValueError(f"task must be 'regression' or 'binary', got {task!r}")
        self.config = config
        self.task = task
        self.seed = seed
        self.features = FusedFeatures(
            encoder,
            EmbeddingProjection(neighbours=tuple(config.image_knn_neighbours)),
            EmbeddingProjection(neighbours=tuple(config.text_knn_neighbours)),
        )
        threads = config.threads or available_threads()
        categorical = self.features.categorical_positions
        self.members: dict[str, LightGBMMember | CatBoostMember] = {
            name: MEMBER_TYPES[name](config, task, categorical, seed=seed, threads=threads) for name in config.members
        }

    @property
    def encoder(self) -> AttributeEncoder:
        return self.features.encoder

    def fit(
        self,
        encoded: EncodedAttributes,
        image: np.ndarray,
        text: np.ndarray,
        present: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> BoostedFusionModel:
        """Fit on N products: image (N, Di), text (N, Dt), present (N, 3) bool, labels (N,), weights (N,) or None."""
        labels = np.asarray(labels, dtype=np.float64)
        rng = np.random.default_rng(self.seed)

        # 1. Embedding projections, out of fold for these rows.
        image = np.where(present[:, IMAGE, None], image, np.nan)
        text = np.where(present[:, TEXT, None], text, np.nan)
        projected_image = self.features.image.fit(image, labels, folds=self.config.projection_folds, seed=self.seed)
        projected_text = self.features.text.fit(text, labels, folds=self.config.projection_folds, seed=self.seed)

        # 2. Fused features (N, F).
        attribute_block = self.features.attribute_block(encoded, present[:, ATTRIBUTES])
        x = np.hstack([attribute_block, projected_image, projected_text])
        blocks = _block_slices(attribute_block.shape[1], projected_image.shape[1], projected_text.shape[1])

        # 3. Early-stopping rows.
        stop = np.zeros(len(labels), dtype=bool)
        stop[rng.choice(len(labels), size=max(1, int(round(self.config.early_stopping_share * len(labels)))), replace=False)] = True

        # 4. Modality dropout copies.
        w = _sample_weights(weights, self.config.sample_weighting, len(labels))
        x, y, w, stop = self._with_dropout_copies(x, labels, w, stop, blocks, rng)

        # 5. Members.
        for member in self.members.values():
            member.fit(x, y, w, stop)
        return self

    def _with_dropout_copies(
        self,
        x: np.ndarray,
        y: np.ndarray,
        w: np.ndarray | None,
        stop: np.ndarray,
        blocks: dict[int, slice],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        share = self.config.modality_dropout
        if share <= 0:
            return x, y, w, stop
        empty = self.features.attribute_block(
            self.encoder.transform([None]), np.zeros(1, dtype=bool)
        )[0]  # (Fa,) the attribute columns of a product without attributes
        parts_x, parts_y, parts_w, parts_stop = [x], [y], [w], [stop]
        for modality, columns in blocks.items():
            rows = rng.choice(len(y), size=int(round(share * len(y))), replace=False)
            copy = x[rows].copy()
            copy[:, columns] = empty if modality == ATTRIBUTES else np.nan
            parts_x.append(copy)
            parts_y.append(y[rows])
            parts_w.append(None if w is None else w[rows])
            parts_stop.append(stop[rows])  # a copy of an early-stopping row stays held out
        weights = None if w is None else np.concatenate(parts_w)  # type: ignore[arg-type]
        return np.vstack(parts_x), np.concatenate(parts_y), weights, np.concatenate(parts_stop)

    def predict(self, encoded: EncodedAttributes, image: np.ndarray, text: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Return predictions (B,) in label units, P(positive) for binary."""
        return self.predict_features(self.features.build(encoded, image, text, present))

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Average the members' predictions (B,) on fused features x (B, F)."""
        return np.mean([member.predict(x) for member in self.members.values()], axis=0)

    def save(self, directory: Path) -> list[Path]:
        """Write the projections and every member's model file into `directory`; return the paths."""
        arrays = {**self.features.image.arrays("image"), **self.features.text.arrays("text")}
        projections = directory / PROJECTIONS_FILE
        np.savez(projections, **arrays)
        return [projections, *(member.save(directory) for member in self.members.values())]

    def consistency_problems(self) -> list[str]:
        """Return what does not fit together in a loaded model: array shapes, values and feature counts."""
        problems = []
        for name, projection in (("image", self.features.image), ("text", self.features.text)):
            coef, vectors, labels = projection.ridge_coef, projection.index_vectors, projection.index_labels
            if coef is None or vectors is None or labels is None:
                problems.append(f"the {name} projection is not fitted")
                continue
            if coef.ndim != 1 or vectors.ndim != 2 or vectors.shape[1] != coef.shape[0]:
                problems.append(
                    f"the {name} projection's ridge weights {coef.shape} and kNN index {vectors.shape} differ in width"
                )
            if labels.shape != (len(vectors),):
                problems.append(f"the {name} kNN index has {len(vectors)} vectors but {labels.shape} labels")
            if not (np.isfinite(coef).all() and np.isfinite(vectors).all() and np.isfinite(labels).all()):
                problems.append(f"the {name} projection holds NaN or infinite values")
            if projection.neighbours and len(vectors) <= max(projection.neighbours):
                problems.append(f"the {name} kNN index has {len(vectors)} vectors, too few for {projection.neighbours}")
        expected = len(self.features.feature_names)
        for name, member in self.members.items():
            width = member.feature_count()
            if width != expected:
                problems.append(f"the {name} member takes {width} features, but the settings and encoder give {expected}")
        return problems

    @classmethod
    def load(
        cls, directory: Path, config: BoostedConfig, encoder: AttributeEncoder, task: str, *, seed: int = 0
    ) -> BoostedFusionModel:
        """Rebuild a fitted model from `save` output and its config, encoder and task."""
        model = cls(config, encoder, task, seed=seed)
        if not zipfile.is_zipfile(directory / PROJECTIONS_FILE):
            raise ValueError(f"{directory / PROJECTIONS_FILE} is not an .npz archive")
        with np.load(directory / PROJECTIONS_FILE, allow_pickle=False) as stored:
            arrays = dict(stored)
        model.features.image = EmbeddingProjection.from_arrays(arrays, "image", config.image_knn_neighbours)
        model.features.text = EmbeddingProjection.from_arrays(arrays, "text", config.text_knn_neighbours)
        for member in model.members.values():
            member.load(directory)
        return model


def _block_slices(attributes: int, image: int, text: int) -> dict[int, slice]:
    return {
        ATTRIBUTES: slice(0, attributes),
        IMAGE: slice(attributes, attributes + image),
        TEXT: slice(attributes + image, attributes + image + text),
    }


def _sample_weights(weights: np.ndarray | None, weighting: str, n: int) -> np.ndarray | None:
    """Return per-row weights (N,) or None; a missing weight counts as the median of the known ones."""
    if weights is None or weighting == "none":
        return None
    weights = np.asarray(weights, dtype=np.float64)
    known = np.isfinite(weights) & (weights >= 0)
    fill = float(np.median(weights[known])) if known.any() else 1.0
    weights = np.where(known, weights, fill)
    return np.log1p(weights) + 1e-3 if weighting == "log1p" else np.ones(n)
