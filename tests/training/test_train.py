import numpy as np
import pandas as pd
import pytest
import torch

from fusion.attributes import AttributeEncoder
from fusion.batch import FusionBatch
from fusion.labels import LabelScaling
from fusion.model import FusionConfig
from training.metrics import classification_metrics, regression_metrics
from training.train import LabelledSplit, TrainConfig, evaluate_loss, train_fusion

IMAGE_DIM = 16
TEXT_DIM = 8
CATEGORY_EFFECT = {"good": 1.0, "fair": 0.0, "poor": -1.0}


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """Return image, text, attributes, present flags and a label with signal planted in every modality."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
    text = rng.normal(size=(n, TEXT_DIM)).astype(np.float32)
    price = np.exp(rng.normal(3.0, 1.0, size=n))
    category = rng.choice(list(CATEGORY_EFFECT), size=n)
    present = rng.random((n, 3)) > 0.1

    label = (
        0.8 * image[:, 0] * present[:, 0]
        + 0.6 * np.tanh(image[:, 1]) * present[:, 0]
        + 0.8 * text[:, 0] * present[:, 1]
        + 0.5 * (np.log(price) - 3.0) * present[:, 2]
        + np.array([CATEGORY_EFFECT[c] for c in category]) * present[:, 2]
        + rng.normal(0.0, 0.3, size=n)
        + 5.0
    )
    image[~present[:, 0]] = np.nan  # absent embeddings, as from images that failed to decode
    attributes = pd.DataFrame({"price": price, "category": category})
    attributes.loc[~present[:, 2], ["price", "category"]] = None
    return image, text, attributes, present, label


def _split(
    encoder: AttributeEncoder, scaling: LabelScaling, data: tuple, weights: np.ndarray | None = None
) -> LabelledSplit:
    image, text, attributes, present, label = data
    features = FusionBatch.from_numpy(image, text, encoder.transform_frame(attributes), present)
    return LabelledSplit(
        features=features,
        targets=torch.from_numpy(scaling.to_model_targets(label)),
        weights=None if weights is None else torch.from_numpy(weights.astype(np.float32)),
    )


def _model_config(encoder: AttributeEncoder, task: str = "regression", **overrides: object) -> FusionConfig:
    values: dict[str, object] = {
        "image_dim": IMAGE_DIM,
        "text_dim": TEXT_DIM,
        "numeric_dim": encoder.numeric_dim,
        "categorical_cardinalities": encoder.categorical_cardinalities,
        "task": task,
        "hidden_dim": 64,
        "modality_dim": 32,
        "dropout": 0.1,
        "modality_dropout": 0.1,
    }
    values.update(overrides)
    return FusionConfig(**values)


def test_regression_learns_signal():
    train_data, validation_data, test_data = _synthetic(800, 0), _synthetic(200, 1), _synthetic(400, 2)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(train_data[2])
    scaling = LabelScaling.fit("regression", train_data[4])
    config = TrainConfig(epochs=30, batch_size=128, learning_rate=3e-3, patience=5, device="cpu")

    model, history = train_fusion(
        _split(encoder, scaling, train_data), _split(encoder, scaling, validation_data), _model_config(encoder), config
    )

    test = _split(encoder, scaling, test_data)
    with torch.no_grad():
        predicted = scaling.to_label_units(test.features.run(model).numpy())
    metrics = regression_metrics(test_data[4], predicted)
    assert metrics["r2"] > 0.5, metrics
    assert history.best_validation_loss < history.validation_loss[0]


def test_binary_learns_signal():
    train_data, validation_data, test_data = _synthetic(800, 3), _synthetic(200, 4), _synthetic(400, 5)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(train_data[2])
    threshold = float(np.median(train_data[4]))
    binarised = [(*data[:4], (data[4] > threshold).astype(np.float64)) for data in (train_data, validation_data, test_data)]
    scaling = LabelScaling.fit("binary", binarised[0][4])
    config = TrainConfig(epochs=30, batch_size=128, learning_rate=3e-3, patience=5, device="cpu")

    model, _ = train_fusion(
        _split(encoder, scaling, binarised[0]),
        _split(encoder, scaling, binarised[1]),
        _model_config(encoder, "binary"),
        config,
    )

    test = _split(encoder, scaling, binarised[2])
    with torch.no_grad():
        probability = scaling.to_label_units(test.features.run(model).numpy())
    metrics = classification_metrics(binarised[2][4], probability)
    assert metrics["roc_auc"] > 0.8, metrics
    assert metrics["accuracy"] > 0.7, metrics


def test_early_stopping_restores_best():
    # A tiny training set of pure noise and a large learning rate: the validation loss soon rises.
    rng = np.random.default_rng(7)
    train_data, validation_data = list(_synthetic(40, 6)), list(_synthetic(200, 7))
    train_data[4] = rng.normal(size=40)
    validation_data[4] = rng.normal(size=200)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(train_data[2])
    scaling = LabelScaling.fit("regression", train_data[4])
    train, validation = _split(encoder, scaling, train_data), _split(encoder, scaling, validation_data)
    config = TrainConfig(epochs=200, batch_size=8, learning_rate=1e-2, weight_decay=0.0, patience=5, device="cpu")

    model, history = train_fusion(train, validation, _model_config(encoder, dropout=0.0), config)

    assert history.stopped_early
    assert history.epochs_run == history.best_epoch + config.patience + 1
    assert history.best_epoch == int(np.argmin(history.validation_loss))
    assert history.validation_loss[-1] > history.best_validation_loss
    assert evaluate_loss(model, validation) == pytest.approx(history.best_validation_loss, rel=1e-5)
    assert not model.training


def test_training_is_reproducible():
    data = _synthetic(200, 8)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(data[2])
    scaling = LabelScaling.fit("regression", data[4])
    split = _split(encoder, scaling, data)
    config = TrainConfig(epochs=3, batch_size=32, seed=11, device="cpu")

    first, _ = train_fusion(split, split, _model_config(encoder), config)
    second, _ = train_fusion(split, split, _model_config(encoder), config)

    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_zero_weight_rows_ignored():
    data = _synthetic(300, 9)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(data[2])
    scaling = LabelScaling.fit("regression", data[4])
    weights = np.ones(300)
    weights[::2] = 0.0
    corrupted = (*data[:4], np.where(weights == 0, 1000.0, data[4]))
    clean_split = _split(encoder, scaling, data, weights)
    corrupted_split = _split(encoder, scaling, corrupted, weights)
    config = TrainConfig(epochs=2, batch_size=300, seed=0, device="cpu")

    _, clean_history = train_fusion(clean_split, clean_split, _model_config(encoder), config)
    _, corrupted_history = train_fusion(corrupted_split, corrupted_split, _model_config(encoder), config)

    assert corrupted_history.train_loss == pytest.approx(clean_history.train_loss)
    assert corrupted_history.validation_loss == pytest.approx(clean_history.validation_loss)


def test_binary_rejects_non_binary_targets():
    data = _synthetic(50, 10)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(data[2])
    split = _split(encoder, LabelScaling.fit("regression", data[4]), data)

    with pytest.raises(ValueError, match="must be 0 or 1"):
        train_fusion(split, split, _model_config(encoder, "binary"), TrainConfig(epochs=1, device="cpu"))


def test_split_rejects_bad_weights():
    data = _synthetic(10, 11)
    encoder = AttributeEncoder(["price"], ["category"], ["price"]).fit(data[2])
    scaling = LabelScaling.fit("regression", data[4])

    with pytest.raises(ValueError, match="non-negative"):
        _split(encoder, scaling, data, weights=-np.ones(10))
    with pytest.raises(ValueError, match="sum to 0"):
        _split(encoder, scaling, data, weights=np.zeros(10))
