import numpy as np
import pytest

from training.baselines import LightGBMOnAttributesTfidf, RidgeOnAttributes, RidgeOnEmbedding
from training.cv import make_folds
from training.metrics import classification_metrics, regression_metrics
from training.tabular import TabularEncoder, detect_tag_columns, split_tags


def _holdout_r2(model, data) -> float:
    fold = make_folds(data.labels, folds=4, seed=0)[0]
    model.fit(data.take(fold.train))
    return regression_metrics(data.labels[fold.test], model.predict(data.take(fold.test)))["r2"]


def test_split_tags_strips_and_drops_empty():
    assert split_tags("Dice Rolling; Trading;  ; Bluffing") == ["Dice Rolling", "Trading", "Bluffing"]
    assert split_tags(None) == []


def test_tag_columns_detected(regression_data):
    assert detect_tag_columns(regression_data.texts, regression_data.spec) == ["tags"]


def test_tabular_encoder_columns(regression_data):
    encoder = TabularEncoder(regression_data.spec, ["tags"], min_count=1)
    encoder.fit(regression_data.attributes, regression_data.texts)

    features = encoder.transform(regression_data.attributes, regression_data.texts)

    assert features.shape == (len(regression_data), len(encoder.feature_names))
    assert "colour=red" in encoder.feature_names
    assert "tags#Trading" in encoder.feature_names
    trading = features[:, encoder.feature_names.index("tags#Trading")]
    expected = [("Trading" in split_tags(value)) for value in regression_data.texts["tags"]]
    assert np.array_equal(trading == 1.0, np.array(expected))
    price_missing = features[:, encoder.feature_names.index("price__missing")]
    assert np.array_equal(price_missing == 1.0, regression_data.attributes["price"].isna().to_numpy())


def test_ridge_attributes_learns_signal(regression_data):
    # Size, the Trading tag and the colour explain most of the label but text[:, 0] is left out.
    assert _holdout_r2(RidgeOnAttributes(), regression_data) > 0.6


def test_ridge_text_learns_signal(regression_data):
    assert _holdout_r2(RidgeOnEmbedding("text"), regression_data) > 0.1


def test_ridge_image_finds_no_signal(regression_data):
    assert _holdout_r2(RidgeOnEmbedding("image"), regression_data) < 0.05


def test_ridge_tfidf_learns_signal(regression_data):
    assert _holdout_r2(RidgeOnAttributes(with_tfidf=True), regression_data) > 0.6


def test_lightgbm_baseline_learns_signal(regression_data):
    assert _holdout_r2(LightGBMOnAttributesTfidf(), regression_data) > 0.5


@pytest.mark.parametrize("with_tfidf", [False, True])
def test_binary_ridge_returns_probabilities(binary_data, with_tfidf):
    fold = make_folds(binary_data.labels, folds=4, stratify=True)[0]
    model = RidgeOnAttributes(with_tfidf=with_tfidf)
    model.fit(binary_data.take(fold.train))

    probability = model.predict(binary_data.take(fold.test))

    assert ((probability >= 0) & (probability <= 1)).all()
    assert classification_metrics(binary_data.labels[fold.test], probability)["roc_auc"] > 0.8


def test_embedding_modality_validated():
    with pytest.raises(ValueError, match="modality"):
        RidgeOnEmbedding("audio")
