"""The gradient-boosted members of the boosted fusion head, each saved in its library's own format.

LightGBM saves model text and CatBoost a .cbm file; neither is a pickle. Both take the categorical
vocabulary indices as categorical features. `fit` first picks the number of trees by early stopping
on the held-out rows it is given, then refits on all rows with 10% more trees for the extra rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, CatBoostRegressor, Pool

from fusion.boosted.config import BoostedConfig

logger = logging.getLogger(__name__)

_MIN_TREES = 50
# Batches below this many rows predict on one thread: on 2 cores one product took 1.2 ms on one
# thread and 7.9 ms on all of them, and gRPC workers already predict in parallel.
PARALLEL_PREDICT_ROWS = 2048


def predict_threads(rows: int, threads: int) -> int:
    """Return the threads for predicting `rows` rows: one for small batches, else `threads`."""
    return 1 if rows < PARALLEL_PREDICT_ROWS else threads


class Member(Protocol):
    """One boosted model of the head; `predict` returns label units, or P(positive) for binary."""

    file_name: str
    trees: int

    def fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, stop: np.ndarray) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def save(self, directory: Path) -> Path: ...

    def feature_count(self) -> int: ...


class _MemberSettings:
    """Base of the members: the head's config, the task, the categorical columns, seed and threads."""

    def __init__(self, config: BoostedConfig, task: str, categorical: list[int], *, seed: int, threads: int) -> None:
        self.config = config
        self.task = task
        self.categorical = categorical
        self.seed = seed
        self.threads = threads
        self.trees = 0


class LightGBMMember(_MemberSettings):
    """LightGBM regressor or binary classifier."""

    file_name = "lightgbm.txt"
    booster: lgb.Booster | None = None

    def _params(self) -> dict[str, object]:
        s = self.config.lightgbm
        return {
            "objective": "binary" if self.task == "binary" else "regression",
            "learning_rate": s.learning_rate,
            "num_leaves": s.num_leaves,
            "min_data_in_leaf": s.min_data_in_leaf,
            "feature_fraction": s.feature_fraction,
            "bagging_fraction": s.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": s.lambda_l2,
            "cat_smooth": s.cat_smooth,
            "seed": self.seed,
            "num_threads": self.threads,
            "deterministic": True,
            "verbose": -1,
        }

    def _dataset(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> lgb.Dataset:
        return lgb.Dataset(x, y, weight=w, categorical_feature=self.categorical, free_raw_data=False)

    def fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, stop: np.ndarray) -> None:
        fit_rows = ~stop
        # 1. Number of trees by early stopping on the held-out rows.
        probe = lgb.train(
            self._params(),
            self._dataset(x[fit_rows], y[fit_rows], None if w is None else w[fit_rows]),
            num_boost_round=self.config.max_trees,
            valid_sets=[self._dataset(x[stop], y[stop], None if w is None else w[stop])],
            callbacks=[lgb.early_stopping(self.config.early_stopping_rounds, verbose=False)],
        )
        self.trees = max(_MIN_TREES, int(probe.best_iteration * 1.1))
        # 2. Refit on every row.
        self.booster = lgb.train(self._params(), self._dataset(x, y, w), num_boost_round=self.trees)
        logger.info("lightgbm member: %d trees on %d rows", self.trees, len(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("LightGBMMember.predict called before fit or load")
        threads = predict_threads(len(x), self.threads)
        return np.asarray(self.booster.predict(x, num_threads=threads), dtype=np.float64)

    def save(self, directory: Path) -> Path:
        if self.booster is None:
            raise RuntimeError("LightGBMMember.save called before fit")
        path = directory / self.file_name
        self.booster.save_model(str(path))
        return path

    def load(self, directory: Path) -> None:
        self.booster = lgb.Booster(model_file=str(directory / self.file_name))
        self.trees = self.booster.num_trees()

    def feature_count(self) -> int:
        """Return the number of input features the booster was trained on."""
        if self.booster is None:
            raise RuntimeError("LightGBMMember.feature_count called before fit or load")
        return int(self.booster.num_feature())


class CatBoostMember(_MemberSettings):
    """CatBoost regressor or binary classifier."""

    file_name = "catboost.cbm"
    model: CatBoostRegressor | CatBoostClassifier | None = None

    def _pool(self, x: np.ndarray, y: np.ndarray | None = None, w: np.ndarray | None = None) -> Pool:
        frame = pd.DataFrame(x).add_prefix("f")
        for position in self.categorical:
            frame[f"f{position}"] = x[:, position].astype(np.int64).astype(str)
        return Pool(frame, label=y, weight=w, cat_features=[f"f{position}" for position in self.categorical])

    def _new(self, iterations: int, **extra: object) -> CatBoostRegressor | CatBoostClassifier:
        s = self.config.catboost
        model_type = CatBoostClassifier if self.task == "binary" else CatBoostRegressor
        return model_type(
            iterations=iterations,
            learning_rate=s.learning_rate,
            depth=s.depth,
            l2_leaf_reg=s.l2_leaf_reg,
            random_seed=self.seed,
            thread_count=self.threads,
            loss_function="Logloss" if self.task == "binary" else "RMSE",
            verbose=False,
            allow_writing_files=False,
            **extra,
        )

    def fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, stop: np.ndarray) -> None:
        fit_rows = ~stop
        # 1. Number of trees by early stopping on the held-out rows.
        probe = self._new(self.config.max_trees, od_type="Iter", od_wait=self.config.early_stopping_rounds)
        probe.fit(
            self._pool(x[fit_rows], y[fit_rows], None if w is None else w[fit_rows]),
            eval_set=self._pool(x[stop], y[stop], None if w is None else w[stop]),
        )
        self.trees = max(_MIN_TREES, int(probe.get_best_iteration() * 1.1))
        # 2. Refit on every row.
        self.model = self._new(self.trees)
        self.model.fit(self._pool(x, y, w))
        logger.info("catboost member: %d trees on %d rows", self.trees, len(y))

    def _prediction_pool(self, x: np.ndarray) -> Pool:
        # An object array gives the same pool as _pool's DataFrame of named columns, without pandas'
        # per-column work: for 8 rows of 213 features it took 0.24 ms instead of 8.5 ms.
        data = x.astype(object)  # (B, F)
        for position in self.categorical:
            data[:, position] = x[:, position].astype(np.int64).astype(str)
        return Pool(data, cat_features=list(self.categorical))

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("CatBoostMember.predict called before fit or load")
        pool = self._prediction_pool(x)
        threads = predict_threads(len(x), self.threads)
        if isinstance(self.model, CatBoostClassifier):
            return np.asarray(self.model.predict_proba(pool, thread_count=threads)[:, 1], dtype=np.float64)
        return np.asarray(self.model.predict(pool, thread_count=threads), dtype=np.float64)

    def save(self, directory: Path) -> Path:
        if self.model is None:
            raise RuntimeError("CatBoostMember.save called before fit")
        path = directory / self.file_name
        self.model.save_model(str(path), format="cbm")
        return path

    def load(self, directory: Path) -> None:
        self.model = CatBoostClassifier() if self.task == "binary" else CatBoostRegressor()
        self.model.load_model(str(directory / self.file_name), format="cbm")
        self.trees = int(self.model.tree_count_)

    def feature_count(self) -> int:
        """Return the number of input features the model was trained on."""
        if self.model is None:
            raise RuntimeError("CatBoostMember.feature_count called before fit or load")
        return len(self.model.feature_names_)


MEMBER_TYPES: dict[str, type[LightGBMMember] | type[CatBoostMember]] = {
    "lightgbm": LightGBMMember,
    "catboost": CatBoostMember,
}
