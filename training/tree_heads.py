"""Gradient-boosted heads on all modalities, and ridge stacking of out-of-fold predictions.

Both heads read the same inputs: the tabular attributes with tag multi-hot (TabularEncoder), a
PCA of the image and of the text embedding, and a truncated SVD of the title-and-tags TF-IDF.
The CatBoost head passes the categorical columns as native categorical features instead of one-hot.
Each head stops boosting on a validation share of its training rows, then keeps that many trees.
A fitted head saves to a folder as JSON, .npz arrays and the booster's own format (LightGBM model
text, CatBoost .cbm), never as pickle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, CatBoostRegressor, Pool
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split

from training.baselines import fill_missing_embeddings
from training.cv import Fold
from training.experiment_data import ExperimentData
from training.tabular import TabularEncoder, TextTfidf, detect_tag_columns, tfidf_documents

logger = logging.getLogger(__name__)

EMBEDDING_COMPONENTS = 32  # PCA components kept per embedding
TFIDF_COMPONENTS = 50
EARLY_STOPPING_SHARE = 0.15  # share of training rows held out to pick the number of trees
_STATE_FILE = "features.json"
_ARRAYS_FILE = "features.npz"


class TreeFeatures:
    """Feature builder of the tree heads: attributes, embedding PCA and TF-IDF SVD, fitted on training rows."""

    def __init__(self, *, seed: int = 0, one_hot_categories: bool = True) -> None:
        self.seed = seed
        self.one_hot_categories = one_hot_categories
        self.encoder: TabularEncoder | None = None
        self.tfidf: TextTfidf | None = None
        self.tag_columns: list[str] = []
        self.pca: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # modality -> (mean (D,), components (K, D))

    def fit(self, data: ExperimentData) -> TreeFeatures:
        """Fit the encoder, PCA bases and TF-IDF SVD on training rows."""
        self.tag_columns = detect_tag_columns(data.texts, data.spec)
        self.encoder = TabularEncoder(data.spec, self.tag_columns).fit(data.attributes, data.texts)
        if not self.one_hot_categories:
            self.encoder.categorical = []  # CatBoost reads the raw categorical columns instead
        documents = tfidf_documents(data.texts, data.spec, self.tag_columns)
        self.tfidf = TextTfidf(components=TFIDF_COMPONENTS, seed=self.seed).fit(documents)
        for modality, vectors in (("image", data.image), ("text", data.text)):
            mean = np.nanmean(vectors, axis=0)  # (D,)
            centred = fill_missing_embeddings(vectors, mean) - mean  # (N, D)
            # Principal axes from the SVD of the centred training vectors, largest first.
            _, _, right = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
            self.pca[modality] = (mean.astype(np.float64), right[:EMBEDDING_COMPONENTS])
        return self

    def transform(self, data: ExperimentData) -> np.ndarray:
        """Return the numeric features (N, F) float32."""
        if self.encoder is None or self.tfidf is None:
            raise RuntimeError("TreeFeatures.transform called before fit")
        blocks = [self.encoder.transform(data.attributes, data.texts)]
        for modality, vectors in (("image", data.image), ("text", data.text)):
            mean, components = self.pca[modality]
            blocks.append((fill_missing_embeddings(vectors, mean) - mean) @ components.T)  # (N, K)
        blocks.append(self.tfidf.transform(tfidf_documents(data.texts, data.spec, self.tag_columns)))
        return np.hstack(blocks).astype(np.float32)

    def save(self, directory: Path) -> None:
        """Write the fitted state into `directory`."""
        if self.encoder is None or self.tfidf is None:
            raise RuntimeError("TreeFeatures.save called before fit")
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "seed": self.seed,
            "one_hot_categories": self.one_hot_categories,
            "tag_columns": self.tag_columns,
            "encoder": self.encoder.to_dict(),
        }
        (directory / _STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        arrays = {}
        for modality, (mean, components) in self.pca.items():
            arrays[f"{modality}_mean"] = mean
            arrays[f"{modality}_components"] = components
        np.savez(directory / _ARRAYS_FILE, **arrays)
        self.tfidf.save(directory, "tfidf")

    @classmethod
    def load(cls, directory: Path) -> TreeFeatures:
        """Read what `save` wrote."""
        state = json.loads((directory / _STATE_FILE).read_text(encoding="utf-8"))
        features = cls(seed=state["seed"], one_hot_categories=state["one_hot_categories"])
        features.tag_columns = list(state["tag_columns"])
        features.encoder = TabularEncoder.from_dict(state["encoder"])
        with np.load(directory / _ARRAYS_FILE, allow_pickle=False) as arrays:
            for modality in ("image", "text"):
                features.pca[modality] = (arrays[f"{modality}_mean"], arrays[f"{modality}_components"])
        features.tfidf = TextTfidf.load(directory, "tfidf")
        return features


def _early_stopping_split(data: ExperimentData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(len(data))
    stratify = data.labels if data.task == "binary" else None
    fit_rows, stop_rows = train_test_split(
        positions, test_size=EARLY_STOPPING_SHARE, random_state=seed, stratify=stratify
    )
    return np.sort(fit_rows), np.sort(stop_rows)


class LightGBMHead:
    """LightGBM on TreeFeatures, with the number of trees chosen by early stopping."""

    MODEL_FILE = "lightgbm.txt"

    def __init__(self, *, seed: int = 0, threads: int = 2, max_trees: int = 3000) -> None:
        self.seed = seed
        self.threads = threads
        self.max_trees = max_trees
        self.features = TreeFeatures(seed=seed)
        self.booster: lgb.Booster | None = None
        self.task = "regression"

    def _params(self) -> dict[str, object]:
        return {
            "objective": "binary" if self.task == "binary" else "regression",
            "learning_rate": 0.02,
            "num_leaves": 15,
            "min_data_in_leaf": 20,
            "feature_fraction": 0.5,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.seed,
            "num_threads": self.threads,
            "verbose": -1,
        }

    def fit(self, data: ExperimentData) -> None:
        self.task = data.task
        self.features.fit(data)
        matrix = self.features.transform(data)  # (N, F)

        # 1. Pick the number of trees on a held-out share of the training rows.
        fit_rows, stop_rows = _early_stopping_split(data, self.seed)
        probe = lgb.train(
            self._params(),
            lgb.Dataset(matrix[fit_rows], data.labels[fit_rows]),
            num_boost_round=self.max_trees,
            valid_sets=[lgb.Dataset(matrix[stop_rows], data.labels[stop_rows])],
            callbacks=[lgb.early_stopping(100, verbose=False)],
        )
        trees = max(50, int(probe.best_iteration * 1.1))  # 10% more for the 15% more rows

        # 2. Refit on every training row with that many trees.
        self.booster = lgb.train(self._params(), lgb.Dataset(matrix, data.labels), num_boost_round=trees)
        logger.info("LightGBM head: %d trees on %d rows, %d features", trees, len(data), matrix.shape[1])

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("predict called before fit")
        return np.asarray(self.booster.predict(self.features.transform(data)), dtype=np.float64)

    def save(self, directory: Path) -> None:
        """Write the feature state and the booster as LightGBM model text into `directory`."""
        if self.booster is None:
            raise RuntimeError("save called before fit")
        self.features.save(directory)
        self.booster.save_model(str(directory / self.MODEL_FILE))

    @classmethod
    def load(cls, directory: Path) -> LightGBMHead:
        """Read what `save` wrote; the result predicts but does not record its training settings."""
        head = cls()
        head.features = TreeFeatures.load(directory)
        head.booster = lgb.Booster(model_file=str(directory / cls.MODEL_FILE))
        return head


class CatBoostHead:
    """CatBoost on TreeFeatures plus the raw categorical columns as native categorical features."""

    MODEL_FILE = "catboost.cbm"

    def __init__(self, *, seed: int = 0, threads: int = 2, max_trees: int = 3000) -> None:
        self.seed = seed
        self.threads = threads
        self.max_trees = max_trees
        self.features = TreeFeatures(seed=seed, one_hot_categories=False)
        self.categorical: list[str] = []
        self.model: CatBoostRegressor | CatBoostClassifier | None = None

    def _pool(self, data: ExperimentData, labels: np.ndarray | None = None) -> Pool:
        numeric = pd.DataFrame(self.features.transform(data)).add_prefix("f")
        categories = data.attributes[self.categorical].astype(object).fillna("<missing>").astype(str)
        frame = pd.concat([numeric, categories.reset_index(drop=True)], axis=1)
        return Pool(frame, label=labels, cat_features=self.categorical)

    def _settings(self, task: str) -> dict[str, object]:
        return {
            "iterations": self.max_trees,
            "learning_rate": 0.03,
            "depth": 6,
            "l2_leaf_reg": 3.0,
            "random_seed": self.seed,
            "thread_count": self.threads,
            "loss_function": "Logloss" if task == "binary" else "RMSE",
            "verbose": False,
            "allow_writing_files": False,
        }

    def fit(self, data: ExperimentData) -> None:
        self.features.fit(data)
        self.categorical = list(data.spec.categorical_columns)
        model_type = CatBoostClassifier if data.task == "binary" else CatBoostRegressor

        # 1. Pick the number of trees on a held-out share of the training rows.
        fit_rows, stop_rows = _early_stopping_split(data, self.seed)
        fit_part, stop_part = data.take(fit_rows), data.take(stop_rows)
        probe = model_type(**self._settings(data.task), od_type="Iter", od_wait=100)
        probe.fit(self._pool(fit_part, fit_part.labels), eval_set=self._pool(stop_part, stop_part.labels))
        trees = max(50, int(probe.get_best_iteration() * 1.1))

        # 2. Refit on every training row with that many trees.
        settings = self._settings(data.task) | {"iterations": trees}
        self.model = model_type(**settings)
        self.model.fit(self._pool(data, data.labels))
        logger.info("CatBoost head: %d trees on %d rows", trees, len(data))

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("predict called before fit")
        pool = self._pool(data)
        if isinstance(self.model, CatBoostClassifier):
            return np.asarray(self.model.predict_proba(pool)[:, 1], dtype=np.float64)
        return np.asarray(self.model.predict(pool), dtype=np.float64)

    def save(self, directory: Path) -> None:
        """Write the feature state and the model as a CatBoost .cbm file into `directory`."""
        if self.model is None:
            raise RuntimeError("save called before fit")
        self.features.save(directory)
        (directory / "catboost.json").write_text(
            json.dumps({"categorical": self.categorical, "binary": isinstance(self.model, CatBoostClassifier)}),
            encoding="utf-8",
        )
        self.model.save_model(str(directory / self.MODEL_FILE), format="cbm")

    @classmethod
    def load(cls, directory: Path) -> CatBoostHead:
        """Read what `save` wrote."""
        head = cls()
        head.features = TreeFeatures.load(directory)
        meta = json.loads((directory / "catboost.json").read_text(encoding="utf-8"))
        head.categorical = list(meta["categorical"])
        head.model = CatBoostClassifier() if meta["binary"] else CatBoostRegressor()
        head.model.load_model(str(directory / cls.MODEL_FILE), format="cbm")
        return head


def stack_out_of_fold(
    predictions: dict[str, np.ndarray], labels: np.ndarray, folds: list[Fold], task: str
) -> np.ndarray:
    """Return stacked predictions (R, N): per repeat r and held-out fold, a meta-model fitted on the other folds.

    `predictions[name]` is (R, N): model `name`'s out-of-fold prediction of every row in repeat r.
    The meta-model is a ridge regression (logistic for binary) on those columns.
    NOTE: the base predictions of the other folds come from models that saw the held-out fold,
    so this estimate is slightly optimistic. A servable stack needs inner folds per outer fold.
    """
    names = sorted(predictions)
    repeats = predictions[names[0]].shape[0]
    stacked = np.full((repeats, len(labels)), np.nan)
    for fold in folds:
        inputs = np.column_stack([predictions[name][fold.repeat] for name in names])  # (N, M)
        if task == "binary":
            meta: Ridge | LogisticRegression = LogisticRegression(C=1.0, max_iter=1000)
            meta.fit(inputs[fold.train], labels[fold.train])
            stacked[fold.repeat, fold.test] = meta.predict_proba(inputs[fold.test])[:, 1]
        else:
            meta = Ridge(alpha=1.0).fit(inputs[fold.train], labels[fold.train])
            stacked[fold.repeat, fold.test] = meta.predict(inputs[fold.test])
    return stacked
