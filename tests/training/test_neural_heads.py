from dataclasses import replace

import numpy as np
import pytest

from training.cv import make_folds
from training.experiment import evaluate_models
from training.metrics import classification_metrics, regression_metrics
from training.neural_heads import FusionHeadModel
from training.spec import spec_from_dict


def _fast(head: str) -> FusionHeadModel:
    return FusionHeadModel(head, seed=0, epochs=40, patience=8, device="cpu")


@pytest.mark.parametrize("head", ["concat", "attention", "gated", "transformer"])
def test_fusion_head_learns_planted_signal(head, regression_data):
    fold = make_folds(regression_data.labels, folds=4, seed=0)[0]
    model = _fast(head)
    model.fit(regression_data.take(fold.train))

    predicted = model.predict(regression_data.take(fold.test))

    assert predicted.shape == (fold.test.size,)
    assert np.isfinite(predicted).all()
    # The planted tag term is in a text column, not a spec tag column, so the model cannot see it.
    assert regression_metrics(regression_data.labels[fold.test], predicted)["r2"] > 0.6


def test_fusion_head_binary_probabilities(binary_data):
    fold = make_folds(binary_data.labels, folds=4, stratify=True)[0]
    model = _fast("concat")
    model.fit(binary_data.take(fold.train))

    probability = model.predict(binary_data.take(fold.test))

    assert ((probability >= 0) & (probability <= 1)).all()
    assert classification_metrics(binary_data.labels[fold.test], probability)["roc_auc"] > 0.85


def test_fusion_head_same_seed_same_predictions(regression_data):
    train = regression_data.take(np.arange(200))
    rest = regression_data.take(np.arange(200, len(regression_data)))
    first = _fast("concat")
    first.fit(train)
    second = _fast("concat")
    second.fit(train)

    np.testing.assert_allclose(first.predict(rest), second.predict(rest), rtol=1e-6, atol=1e-6)


def test_fusion_head_rejects_predict_before_fit(regression_data):
    with pytest.raises(RuntimeError, match="fit"):
        _fast("concat").predict(regression_data)


def test_fusion_head_out_of_fold_in_stack(regression_data):
    folds = make_folds(regression_data.labels, folds=3, seed=0)

    result = evaluate_models(regression_data, ["fusion_concat", "ridge_attributes", "stack"], folds)

    predictions = result.predictions["fusion_concat"]
    assert predictions.shape == (1, len(regression_data))
    assert np.isfinite(predictions).all()
    assert np.isfinite(result.predictions["stack"]).all()
    assert len(result.fold_metrics["fusion_concat"]) == 3


def _with_auxiliary_labels(data):
    """Return `data` with a regression auxiliary label from its text vector, missing for every third product."""
    spec = spec_from_dict({**data.spec.to_dict(), "auxiliary_labels": {"text_score": "regression"}})
    score = 2.0 * data.text[:, 0].astype(np.float64)
    score[::3] = np.nan
    return replace(data, spec=spec, auxiliary_labels={"text_score": score})


def test_fusion_head_multitask_fits(regression_data):
    data = _with_auxiliary_labels(regression_data)
    fold = make_folds(data.labels, folds=4, seed=0)[0]
    model = FusionHeadModel("concat", seed=0, epochs=10, patience=10, device="cpu", multitask=True)
    model.fit(data.take(fold.train))

    predicted = model.predict(data.take(fold.test))

    assert model.model.config.auxiliary_tasks == (("text_score", "regression"),)
    assert predicted.shape == (fold.test.size,)
    assert np.isfinite(predicted).all()


def test_fusion_head_multitask_needs_auxiliary_labels(regression_data):
    model = FusionHeadModel("concat", seed=0, epochs=1, device="cpu", multitask=True)
    with pytest.raises(ValueError, match="has no auxiliary_labels"):
        model.fit(regression_data)
