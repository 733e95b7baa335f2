"""Reference models that the fusion model must beat: ridge per modality, ridge on attributes and
TF-IDF, and LightGBM on attributes and an SVD of TF-IDF.

Every model has `fit(data)` and `predict(data) -> (N,)`, which returns the predicted label for a
regression task and P(label = 1) for a binary one. Regression ridge models pick their penalty by
efficient leave-one-out CV on the training rows (RidgeCV); binary ones use LogisticRegressionCV
with 5 inner folds.
"""

from __future__ import annotations

import logging
from typing import Protocol

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.preprocessing import SplineTransformer, StandardScaler

from training.experiment_data import ExperimentData
from training.tabular import TabularEncoder, TextTfidf, detect_tag_columns, tfidf_documents

logger = logging.getLogger(__name__)

RIDGE_ALPHAS = np.logspace(-2, 5, 15)
LOGISTIC_CS = np.logspace(-4, 2, 13)
TFIDF_SVD_COMPONENTS = 100


class ExperimentModel(Protocol):
    """A model that the experiment harness fits on training folds and scores on held-out ones."""

    def fit(self, data: ExperimentData) -> None: ...

    def predict(self, data: ExperimentData) -> np.ndarray: ...


def fill_missing_embeddings(vectors: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Replace all-NaN rows of `vectors` (N, D) by the training mean `means` (D,)."""
    missing = np.isnan(vectors).any(axis=1)
    if not missing.any():
        return vectors
    filled = vectors.copy()
    filled[missing] = means
    return filled


class _LinearHead:
    """RidgeCV for regression or LogisticRegressionCV for binary, on dense or sparse inputs.

    With `scale`, each input column is divided by its training standard deviation first.
    """

    def __init__(self, task: str, *, scale: bool = True) -> None:
        self.task = task
        self.scaler = StandardScaler(with_mean=False) if scale else None
        self.model: RidgeCV | LogisticRegressionCV | None = None

    def fit(self, features: np.ndarray | sp.csr_matrix, labels: np.ndarray) -> None:
        scaled = features if self.scaler is None else self.scaler.fit_transform(features)
        if self.task == "binary":
            self.model = LogisticRegressionCV(
                Cs=LOGISTIC_CS, cv=5, max_iter=2000, scoring="neg_log_loss", l1_ratios=(0.0,),
                use_legacy_attributes=False,
            )
        else:
            self.model = RidgeCV(alphas=RIDGE_ALPHAS)
        self.model.fit(scaled, labels)
        chosen = self.model.alpha_ if self.task != "binary" else float(np.ravel(self.model.C_)[0])
        logger.debug("linear head chose penalty %.4g", chosen)

    def inner_score(self) -> float:
        """Return the inner-CV score of the chosen penalty: RidgeCV's leave-one-out score (negative MSE)."""
        if not isinstance(self.model, RidgeCV):
            raise RuntimeError("inner_score needs a fitted regression head")
        return float(self.model.best_score_)

    def predict(self, features: np.ndarray | sp.csr_matrix) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("predict called before fit")
        scaled = features if self.scaler is None else self.scaler.transform(features)
        if isinstance(self.model, LogisticRegressionCV):
            return self.model.predict_proba(scaled)[:, 1]
        return np.asarray(self.model.predict(scaled), dtype=np.float64)


class RidgeOnEmbedding:
    """Ridge (or logistic) regression on one stored embedding: "image" or "text"."""

    def __init__(self, modality: str) -> None:
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        self.modality = modality
        self.means: np.ndarray | None = None  # (D,)
        self.head: _LinearHead | None = None

    def _vectors(self, data: ExperimentData) -> np.ndarray:
        return data.image if self.modality == "image" else data.text

    def fit(self, data: ExperimentData) -> None:
        vectors = self._vectors(data)  # (N, D)
        self.means = np.nanmean(vectors, axis=0)
        self.head = _LinearHead(data.task)
        self.head.fit(fill_missing_embeddings(vectors, self.means), data.labels)

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.head is None or self.means is None:
            raise RuntimeError("predict called before fit")
        return self.head.predict(fill_missing_embeddings(self._vectors(data), self.means))


class RidgeOnAttributes:
    """Ridge (or logistic) regression on the tabular attributes, optionally with TF-IDF of title and tags.

    Each numeric column also enters as a cubic B-spline basis on quantile knots, because ratings
    depend non-linearly on year and play time (on boardgames fold 0 of 5, R^2 0.36 without the
    splines and 0.50 with them). The standardised attribute block and the TF-IDF block share one
    penalty, so the TF-IDF block is multiplied by a weight from TFIDF_WEIGHTS. For regression the
    weight with the best leave-one-out score of RidgeCV wins, and binary tasks use 3.
    """

    TFIDF_WEIGHTS = (3.0, 10.0)
    BINARY_TFIDF_WEIGHT = 3.0

    def __init__(self, *, with_tfidf: bool = False, splines: bool = True) -> None:
        self.with_tfidf = with_tfidf
        self.splines = SplineTransformer(n_knots=6, degree=3, knots="quantile") if splines else None
        self.encoder: TabularEncoder | None = None
        self.scaler = StandardScaler()
        self.tfidf: TextTfidf | None = None
        self.tfidf_weight = 1.0
        self.tag_columns: list[str] = []
        self.head: _LinearHead | None = None

    def _dense(self, data: ExperimentData) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("predict called before fit")
        encoded = self.encoder.transform(data.attributes, data.texts)  # (N, F), numeric columns first
        if self.splines is None:
            return encoded
        numeric = encoded[:, : len(self.encoder.numeric)]  # (N, Fn), missing values imputed
        return np.hstack([self.splines.transform(numeric), encoded])  # (N, Fn * basis + F)

    def _features(self, data: ExperimentData, tfidf_weight: float) -> np.ndarray | sp.csr_matrix:
        # Only the attribute block is standardised, because scaling TF-IDF columns by their
        # spread would blow up rare n-grams.
        dense = self.scaler.transform(self._dense(data))
        if self.tfidf is None:
            return dense
        documents = tfidf_documents(data.texts, data.spec, self.tag_columns)
        tfidf = tfidf_weight * self.tfidf.transform_sparse(documents)  # (N, V)
        return sp.hstack([sp.csr_matrix(dense), tfidf]).tocsr()

    def fit(self, data: ExperimentData) -> None:
        self.tag_columns = detect_tag_columns(data.texts, data.spec)
        self.encoder = TabularEncoder(data.spec, self.tag_columns, impute=True).fit(data.attributes, data.texts)
        if self.splines is not None:
            encoded = self.encoder.transform(data.attributes, data.texts)
            self.splines.fit(encoded[:, : len(self.encoder.numeric)])
        self.scaler.fit(self._dense(data))
        if not self.with_tfidf:
            self.head = _LinearHead(data.task, scale=False)
            self.head.fit(self._features(data, 1.0), data.labels)
            return

        self.tfidf = TextTfidf().fit(tfidf_documents(data.texts, data.spec, self.tag_columns))
        if data.task == "binary":
            self.tfidf_weight = self.BINARY_TFIDF_WEIGHT
            self.head = _LinearHead(data.task, scale=False)
            self.head.fit(self._features(data, self.tfidf_weight), data.labels)
            return
        best_score = -np.inf
        for weight in self.TFIDF_WEIGHTS:
            head = _LinearHead(data.task, scale=False)
            head.fit(self._features(data, weight), data.labels)
            score = head.inner_score()
            if score > best_score:
                best_score, self.head, self.tfidf_weight = score, head, weight
        logger.debug("ridge on attributes and TF-IDF chose TF-IDF weight %.1f", self.tfidf_weight)

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("predict called before fit")
        return self.head.predict(self._features(data, self.tfidf_weight))


class LightGBMOnAttributesTfidf:
    """LightGBM on the tabular attributes plus a 100-d SVD of the title-and-tags TF-IDF.

    Fixed, untuned settings: 600 trees at learning rate 0.03, 31 leaves, row and feature
    subsampling of 0.8.
    """

    def __init__(self, *, seed: int = 0, threads: int = 2) -> None:
        self.seed = seed
        self.threads = threads
        self.encoder: TabularEncoder | None = None
        self.tfidf: TextTfidf | None = None
        self.tag_columns: list[str] = []
        self.model: lgb.LGBMRegressor | lgb.LGBMClassifier | None = None

    def _features(self, data: ExperimentData) -> np.ndarray:
        if self.encoder is None or self.tfidf is None:
            raise RuntimeError("predict called before fit")
        documents = tfidf_documents(data.texts, data.spec, self.tag_columns)
        return np.hstack([self.encoder.transform(data.attributes, data.texts), self.tfidf.transform(documents)])

    def fit(self, data: ExperimentData) -> None:
        self.tag_columns = detect_tag_columns(data.texts, data.spec)
        self.encoder = TabularEncoder(data.spec, self.tag_columns).fit(data.attributes, data.texts)
        documents = tfidf_documents(data.texts, data.spec, self.tag_columns)
        self.tfidf = TextTfidf(components=TFIDF_SVD_COMPONENTS, seed=self.seed).fit(documents)
        settings = dict(
            n_estimators=600, learning_rate=0.03, num_leaves=31, subsample=0.8, subsample_freq=1,
            colsample_bytree=0.8, random_state=self.seed, n_jobs=self.threads, verbose=-1,
        )
        self.model = lgb.LGBMClassifier(**settings) if data.task == "binary" else lgb.LGBMRegressor(**settings)
        self.model.fit(self._features(data), data.labels)

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("predict called before fit")
        features = self._features(data)
        if isinstance(self.model, lgb.LGBMClassifier):
            return self.model.predict_proba(features)[:, 1]
        return np.asarray(self.model.predict(features), dtype=np.float64)
