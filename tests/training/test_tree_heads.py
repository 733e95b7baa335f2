import numpy as np
import pytest

from training.cv import make_folds
from training.experiment import evaluate_models
from training.metrics import classification_metrics, regression_metrics
from training.tree_heads import CatBoostHead, LightGBMHead, stack_out_of_fold

HEADS = [LightGBMHead, CatBoostHead]


def _fast(head_type):
    return head_type(seed=0, max_trees=300)


@pytest.mark.parametrize("head_type", HEADS)
def test_head_learns_planted_signal(head_type, regression_data):
    fold = make_folds(regression_data.labels, folds=4, seed=0)[0]
    head = _fast(head_type)
    head.fit(regression_data.take(fold.train))

    predicted = head.predict(regression_data.take(fold.test))

    assert predicted.shape == (fold.test.size,)
    assert regression_metrics(regression_data.labels[fold.test], predicted)["r2"] > 0.5


@pytest.mark.parametrize("head_type", HEADS)
def test_head_binary_probabilities(head_type, binary_data):
    fold = make_folds(binary_data.labels, folds=4, stratify=True)[0]
    head = _fast(head_type)
    head.fit(binary_data.take(fold.train))

    probability = head.predict(binary_data.take(fold.test))

    assert ((probability >= 0) & (probability <= 1)).all()
    assert classification_metrics(binary_data.labels[fold.test], probability)["roc_auc"] > 0.8


@pytest.mark.parametrize("head_type", HEADS)
def test_head_save_load_round_trip(head_type, regression_data, tmp_path):
    head = _fast(head_type)
    head.fit(regression_data.take(np.arange(200)))
    rest = regression_data.take(np.arange(200, len(regression_data)))

    head.save(tmp_path)
    loaded = head_type.load(tmp_path)

    assert not list(tmp_path.glob("*.pkl"))
    np.testing.assert_allclose(loaded.predict(rest), head.predict(rest), rtol=1e-6, atol=1e-6)


def test_stack_uses_only_other_folds():
    labels = np.arange(20, dtype=np.float64)
    folds = make_folds(labels, folds=4, seed=0)
    perfect = labels[np.newaxis, :].copy()  # (1, N)
    noise = np.random.default_rng(0).normal(size=(1, 20))

    stacked = stack_out_of_fold({"perfect": perfect, "noise": noise}, labels, folds, "regression")

    assert stacked.shape == (1, 20)
    assert np.isfinite(stacked).all()
    assert regression_metrics(labels, stacked[0])["r2"] > 0.95


def test_evaluate_models_shares_folds(regression_data):
    folds = make_folds(regression_data.labels, folds=3, seed=0)

    result = evaluate_models(regression_data, ["ridge_attributes", "ridge_text", "stack"], folds)

    assert set(result.fold_metrics) == {"ridge_attributes", "ridge_text", "stack"}
    assert all(len(scores) == 3 for scores in result.fold_metrics.values())
    assert np.isfinite(result.predictions["stack"]).all()
    assert np.mean([s["r2"] for s in result.fold_metrics["stack"]]) >= np.mean(
        [s["r2"] for s in result.fold_metrics["ridge_text"]]
    )
