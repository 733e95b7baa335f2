"""Tests of auxiliary tasks in the fusion model: the masked loss, training, config loading and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion.attributes import AttributeEncoder
from fusion.batch import FusionBatch
from fusion.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from fusion.labels import LabelScaling
from fusion.model import FUSION_HEADS, FusionConfig, FusionModel
from training.auxiliary_tasks import masked_auxiliary_loss
from training.metrics import classification_metrics
from training.train import LabelledSplit, TrainConfig, train_fusion

IMAGE_DIM = 8
TEXT_DIM = 6
TASKS = (("rating", "regression"), ("advantage", "binary"))


@pytest.fixture
def price_encoder() -> AttributeEncoder:
    """An encoder of the one attribute column that `_planted` makes."""
    return AttributeEncoder(["price"], [], ["price"]).fit(_planted(50, 9)["attributes"])


def _config(encoder: AttributeEncoder, **overrides: object) -> FusionConfig:
    values: dict[str, object] = {
        "image_dim": IMAGE_DIM,
        "text_dim": TEXT_DIM,
        "numeric_dim": encoder.numeric_dim,
        "categorical_cardinalities": encoder.categorical_cardinalities,
        "hidden_dim": 32,
        "modality_dim": 16,
        "dropout": 0.0,
        "modality_dropout": 0.0,
        "auxiliary_tasks": TASKS,
    }
    values.update(overrides)
    return FusionConfig(**values)


def _planted(n: int, seed: int) -> dict[str, np.ndarray | pd.DataFrame]:
    """Return inputs, a main label from image[:, 0], and auxiliary targets from image[:, 1] and text[:, 2].

    The rating is missing for half the products and the advantage flag for a third.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
    text = rng.normal(size=(n, TEXT_DIM)).astype(np.float32)
    attributes = pd.DataFrame({"price": np.exp(rng.normal(3.0, 1.0, size=n))})
    label = image[:, 0] + rng.normal(0.0, 0.1, size=n)
    rating = 4.0 + 0.8 * image[:, 1] + rng.normal(0.0, 0.1, size=n)  # label units around 4
    advantage = (text[:, 2] > 0).astype(np.float64)
    rating[rng.random(n) < 0.5] = np.nan
    advantage[rng.random(n) < 0.33] = np.nan
    return {
        "image": image,
        "text": text,
        "attributes": attributes,
        "label": label,
        "auxiliary": np.column_stack([rating, advantage]),  # (N, 2) in TASKS order
        "rating_truth": 4.0 + 0.8 * image[:, 1],
        "advantage_truth": (text[:, 2] > 0).astype(np.float64),
    }


def _split(data: dict, encoder: AttributeEncoder, scaling: LabelScaling) -> LabelledSplit:
    n = len(data["label"])
    features = FusionBatch.from_numpy(
        data["image"], data["text"], encoder.transform_frame(data["attributes"]), np.ones((n, 3), dtype=bool)
    )
    return LabelledSplit(
        features=features,
        targets=torch.from_numpy(scaling.to_model_targets(data["label"])),
        auxiliary_targets=torch.from_numpy(data["auxiliary"].astype(np.float32)),
    )


def test_masked_loss_ignores_nan_rows():
    targets = torch.tensor([[0.5, 1.0], [float("nan"), 0.0], [-1.0, float("nan")], [float("nan"), 1.0]])
    weights = torch.ones(4)
    outputs = torch.tensor([[0.2, 0.3], [0.1, -0.4], [0.7, 0.9], [-0.3, 0.6]], requires_grad=True)
    huge = outputs.detach().clone()
    huge[1, 0] = huge[3, 0] = huge[2, 1] = 1e6  # only rows whose target is NaN
    huge.requires_grad_(True)

    loss = masked_auxiliary_loss(TASKS, outputs, targets, weights)
    huge_loss = masked_auxiliary_loss(TASKS, huge, targets, weights)
    huge_loss.backward()

    assert huge_loss.item() == pytest.approx(loss.item())
    assert torch.isfinite(huge.grad).all()
    assert huge.grad[1, 0] == 0
    assert huge.grad[3, 0] == 0
    assert huge.grad[2, 1] == 0


def test_masked_loss_unlabelled_task_adds_zero():
    targets = torch.tensor([[float("nan"), 1.0], [float("nan"), 0.0]])
    outputs = torch.tensor([[3.0, 0.5], [-2.0, -0.5]])
    weights = torch.ones(2)

    loss = masked_auxiliary_loss(TASKS, outputs, targets, weights)
    binary_only = masked_auxiliary_loss(TASKS[1:], outputs[:, 1:], targets[:, 1:], weights)

    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(binary_only.item() / 2)


def test_auxiliary_outputs_learn_planted_signal():
    train_data, validation_data, test_data = _planted(400, 0), _planted(100, 1), _planted(400, 2)
    encoder = AttributeEncoder(["price"], [], ["price"]).fit(train_data["attributes"])
    scaling = LabelScaling.fit("regression", train_data["label"])
    config = TrainConfig(epochs=15, batch_size=100, learning_rate=1e-2, patience=15, device="cpu")

    model, history = train_fusion(
        _split(train_data, encoder, scaling), _split(validation_data, encoder, scaling), _config(encoder), config
    )

    assert history.auxiliary_scalings["rating"].mean == pytest.approx(np.nanmean(train_data["auxiliary"][:, 0]))
    assert len(history.auxiliary_task_loss) == history.epochs_run
    assert history.auxiliary_task_loss[-1] < history.auxiliary_task_loss[0]
    with torch.no_grad():
        outputs = _split(test_data, encoder, scaling).features.run_outputs(model)
    assert outputs.auxiliary is not None
    assert tuple(outputs.auxiliary.shape) == (400, 2)
    rating = history.auxiliary_scalings["rating"].to_label_units(outputs.auxiliary[:, 0].numpy())
    assert np.corrcoef(rating, test_data["rating_truth"])[0, 1] > 0.9
    advantage_probability = history.auxiliary_scalings["advantage"].to_label_units(outputs.auxiliary[:, 1].numpy())
    advantage = classification_metrics(test_data["advantage_truth"], advantage_probability)
    assert advantage["roc_auc"] > 0.9, advantage


@pytest.mark.parametrize("head", FUSION_HEADS)
def test_auxiliary_outputs_leave_prediction_unchanged(head, price_encoder):
    torch.manual_seed(0)
    plain = FusionModel(_config(price_encoder, head=head, auxiliary_tasks=())).eval()
    torch.manual_seed(0)
    multitask = FusionModel(_config(price_encoder, head=head)).eval()
    data = _planted(10, 3)
    batch = FusionBatch.from_numpy(
        data["image"], data["text"], price_encoder.transform_frame(data["attributes"]), np.ones((10, 3), dtype=bool)
    )

    with torch.no_grad():
        plain_prediction = batch.run(plain)
        multitask_prediction = batch.run(multitask)

    assert torch.equal(plain_prediction, multitask_prediction)
    assert plain.state_dict().keys() < multitask.state_dict().keys()


def test_config_without_auxiliary_keys_loads(price_encoder):
    stored = _config(price_encoder, auxiliary_tasks=()).to_dict()
    del stored["auxiliary_tasks"], stored["auxiliary_task_weight"]

    config = FusionConfig.from_dict(stored)

    assert config.auxiliary_tasks == ()
    assert FusionModel(config).auxiliary_task_outputs is None


def test_config_auxiliary_tasks_json_round_trip(price_encoder):
    config = _config(price_encoder, auxiliary_task_weight=0.3)

    loaded = FusionConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert loaded == config
    assert loaded.auxiliary_tasks == TASKS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"auxiliary_task_weight": -0.1}, "auxiliary_task_weight must not be negative"),
        ({"auxiliary_tasks": (("rating", "ordinal"),)}, "task 'ordinal' of 'rating'"),
        ({"auxiliary_tasks": (("rating", "regression"), ("rating", "binary"))}, r"\['rating'\] more than once"),
        ({"auxiliary_tasks": (("", "binary"),)}, "non-empty name"),
    ],
)
def test_config_rejects_invalid_auxiliary_settings(price_encoder, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(price_encoder, **overrides)


def test_train_requires_matching_auxiliary_targets(price_encoder):
    data = _planted(20, 4)
    scaling = LabelScaling.fit("regression", data["label"])
    split = _split(data, price_encoder, scaling)
    without_targets = LabelledSplit(features=split.features, targets=split.targets)
    train_config = TrainConfig(epochs=1, device="cpu")

    with pytest.raises(ValueError, match="no auxiliary_targets"):
        train_fusion(without_targets, without_targets, _config(price_encoder), train_config)
    with pytest.raises(ValueError, match="auxiliary_tasks is empty"):
        train_fusion(split, split, _config(price_encoder, auxiliary_tasks=()), train_config)
    with pytest.raises(ValueError, match=r"\(N, 3\) was expected"):
        train_fusion(split, split, _config(price_encoder, auxiliary_tasks=(*TASKS, ("extra", "binary"))), train_config)


def test_train_rejects_non_binary_auxiliary_target(price_encoder):
    data = _planted(20, 5)
    data["auxiliary"][0, 1] = 2.0
    scaling = LabelScaling.fit("regression", data["label"])
    split = _split(data, price_encoder, scaling)

    with pytest.raises(ValueError, match="'advantage' has training targets other than 0, 1 or NaN"):
        train_fusion(split, split, _config(price_encoder), TrainConfig(epochs=1, device="cpu"))


def test_multitask_checkpoint_loads(tmp_path: Path, price_encoder):
    torch.manual_seed(0)
    model = FusionModel(_config(price_encoder)).eval()
    metadata = CheckpointMetadata(
        model_version="test-multitask",
        label_name="quality",
        label_scaling=LabelScaling(task="regression"),
        feature_schema={},
        image_model_id="image-test@00000000",
        text_model_id="text-test@00000000",
    )

    bundle = load_checkpoint(save_checkpoint(tmp_path / "checkpoint", model, price_encoder, metadata))

    assert bundle.config.auxiliary_tasks == TASKS
    for name, tensor in model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], tensor), name
