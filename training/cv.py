"""Repeated K-fold cross-validation with recorded seeds, and t-intervals over its folds.

Every model of one experiment is scored on the same folds, so two models can be compared by the
per-fold difference of their metric (a paired comparison), which has a far smaller spread than
either model's own scores.

NOTE: folds share training rows, so per-fold scores are not independent and the t-interval
over them is somewhat too narrow (Nadeau and Bengio, "Inference for the Generalization Error",
Machine Learning 52, 2003). `corrected_t_interval` widens it by their correction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.model_selection import KFold, StratifiedKFold

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """Row positions of one fold's training and held-out parts, each sorted."""

    repeat: int  # 0-based repetition of the K-fold split
    index: int  # 0-based fold within the repetition
    seed: int  # seed of this repetition's shuffle
    train: np.ndarray  # (N_train,) int64
    test: np.ndarray  # (N_test,) int64


@dataclass(frozen=True)
class Interval:
    """Mean of per-fold values with a two-sided confidence interval."""

    mean: float
    low: float
    high: float
    level: float  # confidence level, such as 0.95
    count: int  # number of per-fold values

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.high - self.low) / 2.0

    def excludes_zero(self) -> bool:
        """Return True when 0 lies outside the interval."""
        return self.low > 0.0 or self.high < 0.0


def make_folds(
    labels: np.ndarray, *, folds: int = 5, repeats: int = 1, seed: int = 0, stratify: bool = False
) -> list[Fold]:
    """Split N rows into `repeats` x `folds` folds; repetition r shuffles with seed `seed + r`.

    With `stratify`, each fold keeps the class shares of `labels` (N,) (use it for binary tasks).
    The same arguments give the same folds.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) < folds:
        raise ValueError(f"cannot split {len(labels)} rows into {folds} folds")

    result: list[Fold] = []
    positions = np.zeros(len(labels))  # sklearn splitters only use the length of X
    for repeat in range(repeats):
        repeat_seed = seed + repeat
        if stratify:
            splitter: KFold | StratifiedKFold = StratifiedKFold(folds, shuffle=True, random_state=repeat_seed)
        else:
            splitter = KFold(folds, shuffle=True, random_state=repeat_seed)
        for index, (train, test) in enumerate(splitter.split(positions, labels)):
            result.append(
                Fold(
                    repeat=repeat,
                    index=index,
                    seed=repeat_seed,
                    train=np.sort(train).astype(np.int64),
                    test=np.sort(test).astype(np.int64),
                )
            )
    logger.info(
        "made %d x %d folds of %d rows (seeds %d..%d, stratified: %s)",
        repeats, folds, len(labels), seed, seed + repeats - 1, stratify,
    )
    return result


def t_interval(values: np.ndarray, *, level: float = 0.95) -> Interval:
    """Return the mean of per-fold `values` (K,) with its Student-t confidence interval.

    The interval is mean ± t_{(1+level)/2, K-1} · s / sqrt(K), where s is the sample standard
    deviation. It treats the K values as independent (see the module note).
    """
    return corrected_t_interval(values, test_fraction=0.0, level=level)


def corrected_t_interval(values: np.ndarray, *, test_fraction: float, level: float = 0.95) -> Interval:
    """Return the mean of per-fold `values` (K,) with the Nadeau-Bengio corrected t-interval.

    The variance of the mean is s² · (1/K + n_test/n_train) instead of s²/K, where
    `test_fraction` is n_test / n_train (1/(folds-1) for K-fold). A fraction of 0 gives the plain
    t-interval. Raises ValueError for fewer than 2 finite values.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < 2 or not np.isfinite(values).all():
        raise ValueError(f"a t-interval needs at least 2 finite values, got {values.tolist()}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if test_fraction < 0.0:
        raise ValueError(f"test_fraction must not be negative, got {test_fraction}")

    count = values.size
    mean = float(values.mean())
    variance = float(values.var(ddof=1))
    standard_error = np.sqrt(variance * (1.0 / count + test_fraction))
    critical = float(stats.t.ppf((1.0 + level) / 2.0, df=count - 1))
    return Interval(
        mean=mean,
        low=mean - critical * standard_error,
        high=mean + critical * standard_error,
        level=level,
        count=count,
    )


def paired_difference(
    values: np.ndarray, baseline: np.ndarray, *, test_fraction: float = 0.0, level: float = 0.95
) -> Interval:
    """Return the interval of the mean per-fold difference `values - baseline`, both (K,) on the same folds."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    baseline = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if values.shape != baseline.shape:
        raise ValueError(
            f"paired values need the same folds, got {values.size} and {baseline.size} values"
        )
    return corrected_t_interval(values - baseline, test_fraction=test_fraction, level=level)
