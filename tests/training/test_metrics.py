import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from training.metrics import classification_metrics, regression_metrics


def test_regression_known_case():
    y_true = np.array([1.0, 2.0, 3.0, 4.0])
    y_pred = np.array([1.5, 2.0, 2.0, 5.0])

    result = regression_metrics(y_true, y_pred)

    # Errors 0.5, 0, -1, 1: squared sum 2.25 over 4 rows, absolute sum 2.5.
    assert result["rmse"] == pytest.approx(math.sqrt(2.25 / 4))
    assert result["mae"] == pytest.approx(2.5 / 4)
    # Total sum of squares around the mean 2.5 is 5, so R^2 = 1 - 2.25 / 5.
    assert result["r2"] == pytest.approx(1 - 2.25 / 5)
    assert result["pearson"] == pytest.approx(stats.pearsonr(y_true, y_pred)[0])


def test_regression_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=200)
    y_pred = y_true + rng.normal(scale=0.5, size=200)

    result = regression_metrics(y_true, y_pred)

    assert result["rmse"] == pytest.approx(math.sqrt(sk_metrics.mean_squared_error(y_true, y_pred)))
    assert result["mae"] == pytest.approx(sk_metrics.mean_absolute_error(y_true, y_pred))
    assert result["r2"] == pytest.approx(sk_metrics.r2_score(y_true, y_pred))
    assert result["pearson"] == pytest.approx(np.corrcoef(y_true, y_pred)[0, 1])


def test_constant_prediction_pearson_nan():
    result = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))

    assert math.isnan(result["pearson"])
    assert result["r2"] == pytest.approx(0.0)


def test_classification_known_case():
    y_true = np.array([0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.6, 0.4, 0.8, 0.9])

    result = classification_metrics(y_true, probability)

    # Predictions at 0.5: 0, 1, 0, 1, 1, so TP 2, FP 1, FN 1.
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # Of the 6 positive-negative pairs, the positive ranks higher in 5.
    assert result["roc_auc"] == pytest.approx(5 / 6)
    assert result["roc_auc"] == pytest.approx(sk_metrics.roc_auc_score(y_true, probability))


def test_classification_threshold():
    y_true = np.array([0, 0, 1, 1])
    probability = np.array([0.2, 0.6, 0.7, 0.9])

    assert classification_metrics(y_true, probability)["accuracy"] == pytest.approx(0.75)
    assert classification_metrics(y_true, probability, threshold=0.65)["accuracy"] == pytest.approx(1.0)


def test_single_class_auc_nan():
    result = classification_metrics(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))

    assert math.isnan(result["roc_auc"])
    assert result["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        (np.array([1.0, 2.0]), np.array([1.0]), "differ in length"),
        (np.array([]), np.array([]), "zero rows"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "finite"),
    ],
)
def test_regression_rejects_invalid(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        regression_metrics(y_true, y_pred)


def test_classification_rejects_invalid():
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics(np.array([0, 2]), np.array([0.1, 0.9]))
    with pytest.raises(ValueError, match="logits"):
        classification_metrics(np.array([0, 1]), np.array([-2.0, 3.0]))
