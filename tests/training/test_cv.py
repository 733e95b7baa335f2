import numpy as np
import pytest
from scipy import stats

from training.cv import corrected_t_interval, make_folds, paired_difference, t_interval


def test_folds_reproducible_for_seed():
    labels = np.arange(53, dtype=np.float64)

    first = make_folds(labels, folds=5, repeats=2, seed=7)
    second = make_folds(labels, folds=5, repeats=2, seed=7)

    assert len(first) == 10
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.train, b.train)
        assert np.array_equal(a.test, b.test)
    assert [fold.seed for fold in first] == [7] * 5 + [8] * 5


def test_folds_disjoint_and_cover_rows():
    labels = np.arange(53, dtype=np.float64)

    for repeat_folds in (make_folds(labels, folds=5, repeats=2, seed=0)[:5], make_folds(labels, seed=0)[5:]):
        for fold in repeat_folds:
            assert np.intersect1d(fold.train, fold.test).size == 0
            assert fold.train.size + fold.test.size == 53
    tests = np.concatenate([fold.test for fold in make_folds(labels, folds=5, seed=0)])
    assert np.array_equal(np.sort(tests), np.arange(53))


def test_repeats_shuffle_differently():
    folds = make_folds(np.arange(40.0), folds=4, repeats=2, seed=0)

    assert not np.array_equal(folds[0].test, folds[4].test)


def test_stratified_folds_keep_positive_rate():
    labels = np.array([1.0] * 20 + [0.0] * 80)

    for fold in make_folds(labels, folds=5, stratify=True):
        assert labels[fold.test].sum() == 4


def test_t_interval_hand_computed():
    values = np.array([0.50, 0.55, 0.60, 0.52, 0.58])

    interval = t_interval(values)

    # mean 0.55, squared deviations sum to 0.0068, so sd = sqrt(0.0068 / 4) = 0.0412311, t_{0.975, 4} = 2.776445
    half_width = 2.776445 * 0.0412311 / np.sqrt(5)
    assert interval.mean == pytest.approx(0.55)
    assert interval.low == pytest.approx(0.55 - half_width, abs=1e-6)
    assert interval.high == pytest.approx(0.55 + half_width, abs=1e-6)
    assert interval.count == 5


def test_t_interval_matches_scipy():
    values = np.array([1.0, 3.0, 2.0, 5.0])

    interval = t_interval(values, level=0.9)
    low, high = stats.t.interval(0.9, df=3, loc=values.mean(), scale=stats.sem(values))

    assert interval.low == pytest.approx(low)
    assert interval.high == pytest.approx(high)


def test_corrected_interval_is_wider():
    values = np.array([0.50, 0.55, 0.60, 0.52, 0.58])

    plain = t_interval(values)
    corrected = corrected_t_interval(values, test_fraction=0.25)

    # Variance factor 1/5 + 1/4 instead of 1/5, so the half width grows by sqrt(0.45 / 0.2) = 1.5.
    assert corrected.half_width == pytest.approx(1.5 * plain.half_width)


def test_paired_difference_hand_computed():
    model = np.array([0.60, 0.62, 0.58])
    baseline = np.array([0.55, 0.58, 0.55])

    interval = paired_difference(model, baseline)

    # Differences 0.05, 0.04, 0.03: mean 0.04, sd 0.01, t_{0.975, 2} = 4.302653
    half_width = 4.302653 * 0.01 / np.sqrt(3)
    assert interval.mean == pytest.approx(0.04)
    assert interval.half_width == pytest.approx(half_width, abs=1e-6)
    assert interval.excludes_zero()


def test_paired_difference_rejects_unequal_folds():
    with pytest.raises(ValueError, match="same folds"):
        paired_difference(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))


def test_t_interval_rejects_single_value():
    with pytest.raises(ValueError, match="at least 2"):
        t_interval(np.array([0.5]))
