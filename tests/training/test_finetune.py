"""Tests of training.finetune against the real all-MiniLM-L6-v2 backbone, on CPU, with a planted word."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from encoders.text import load_text_encoder
from training.finetune import (
    TextFineTuneConfig,
    TextFineTuneConfigError,
    drop_fields,
    embed_in_batches,
    fine_tune_text_encoder,
    mask_tokens,
)
from training.baselines import RidgeOnEmbedding
from training.experiment_data import ExperimentData
from training.finetune_model import FineTunedTextModel, joined_texts, with_text_embeddings

FILLER = ("dice", "cards", "trading", "farming", "castle", "train", "pirates", "space", "dragons", "cooperative")


def planted_texts(count: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Return `count` two-line texts and labels that are 1.0 exactly where the second line contains "zephyr"."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 2).astype(np.float64)
    texts = []
    for index, label in enumerate(labels):
        words = list(rng.choice(FILLER, size=4, replace=False))
        if label == 1.0:
            words.insert(int(rng.integers(0, 5)), "zephyr")
        texts.append(f"Game {index}\n" + "; ".join(words))
    return texts, labels


@pytest.fixture(scope="module")
def fine_tuned() -> tuple[object, list[str], np.ndarray]:
    texts, labels = planted_texts(60)
    # A zero head makes the starting validation loss the label variance: the frozen linear probe
    # separates this planted word almost perfectly, so it would leave nothing to improve.
    config = TextFineTuneConfig(
        trainable_layers=2, learning_rate=3e-4, head_learning_rate=1e-2, head_init="zeros", max_epochs=3,
        patience=3, validation_share=0.2, batch_size=16, max_tokens=24, field_dropout=0.0,
        token_mask_share=0.05, device="cpu", threads=2, seed=0,
    )
    return fine_tune_text_encoder(texts, labels, "regression", config), texts, labels


def test_fine_tune_lowers_validation_loss(fine_tuned) -> None:
    result, _, _ = fine_tuned
    assert result.best_epoch >= 1
    assert result.history[result.best_epoch].validation_loss < result.history[0].validation_loss


def test_fine_tune_changes_only_last_layers(fine_tuned) -> None:
    result, _, _ = fine_tuned
    pretrained = load_text_encoder(max_tokens=24, device="cpu").model.state_dict()
    tuned = result.encoder.model.state_dict()
    changed = {name for name in pretrained if not torch.equal(pretrained[name], tuned[name])}
    assert changed, "no backbone weight changed"
    assert all(name.startswith(("encoder.layer.4.", "encoder.layer.5.")) for name in changed), sorted(changed)[:5]
    assert any(name.startswith("encoder.layer.4.") for name in changed)
    assert any(name.startswith("encoder.layer.5.") for name in changed)


def test_fine_tuned_embedding_separates_planted_word(fine_tuned) -> None:
    result, texts, labels = fine_tuned
    frozen = embed_in_batches(load_text_encoder(max_tokens=24, device="cpu"), texts)
    tuned = embed_in_batches(result.encoder, texts)
    assert tuned.shape == frozen.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)

    def separation(vectors: np.ndarray) -> float:
        """Distance of the class means, in units of the pooled within-class spread along it."""
        direction = vectors[labels == 1].mean(axis=0) - vectors[labels == 0].mean(axis=0)
        projected = vectors @ direction
        spread = np.sqrt((projected[labels == 1].var() + projected[labels == 0].var()) / 2)
        return float((projected[labels == 1].mean() - projected[labels == 0].mean()) / spread)

    assert separation(tuned) > separation(frozen)


def test_drop_fields_keeps_title() -> None:
    rng = np.random.default_rng(0)
    assert drop_fields("Title\nmechanics\ncategories", 1.0, rng) == "Title"
    assert drop_fields("Title\nmechanics", 0.0, rng) == "Title\nmechanics"


def test_mask_tokens_spares_special_tokens() -> None:
    input_ids = torch.arange(1, 201).reshape(2, 100)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    special[:, 0] = True
    masked = mask_tokens(input_ids, special, 0.5, mask_id=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked[:, 0], input_ids[:, 0])
    share = (masked == 0).float().mean().item()
    assert 0.3 < share < 0.7


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("trainable_layers", 0),
        ("learning_rate", 0.0),
        ("dropout", 1.0),
        ("max_epochs", 0),
        ("patience", 0),
        ("validation_share", 0.5),
        ("batch_size", 0),
        ("max_tokens", 2),
        ("field_dropout", 1.5),
        ("token_mask_share", -0.1),
        ("head_init", "random"),
        ("backbone", "bert-large"),
        ("threads", 0),
        ("max_epochs", 2.5),
        ("learning_rate", float("nan")),
    ],
)
def test_config_error_names_setting(setting: str, value: Any) -> None:
    with pytest.raises(TextFineTuneConfigError, match=f"TextFineTuneConfig.{setting} "):
        TextFineTuneConfig(**{setting: value})


def test_too_many_trainable_layers_rejected() -> None:
    texts, labels = planted_texts(20)
    config = TextFineTuneConfig(trainable_layers=7, device="cpu")
    with pytest.raises(TextFineTuneConfigError, match="trainable_layers=7"):
        fine_tune_text_encoder(texts, labels, "regression", config)


def test_binary_labels_checked() -> None:
    texts, labels = planted_texts(20)
    with pytest.raises(ValueError, match="binary labels must be 0 or 1"):
        fine_tune_text_encoder(texts, labels * 2, "binary", TextFineTuneConfig(device="cpu"))


def test_fine_tuned_model_predicts_held_out_rows(binary_data: ExperimentData) -> None:
    data = binary_data.take(np.arange(60))
    text = data.text.copy()
    text[0] = np.nan
    data = replace(data, text=text)
    config = TextFineTuneConfig(max_epochs=1, batch_size=16, max_tokens=24, device="cpu", seed=0)
    model = FineTunedTextModel(lambda: RidgeOnEmbedding("text"), config)

    model.fit(data.take(np.arange(40)))
    predicted = model.predict(data.take(np.arange(40, 60)))

    assert predicted.shape == (20,)
    assert np.isfinite(predicted).all()
    assert ((predicted >= 0.0) & (predicted <= 1.0)).all()
    assert model.encoder is not None
    embedded = with_text_embeddings(data.take(np.arange(3)), model.encoder)
    assert embedded.text.shape == (3, 384)
    assert np.isnan(embedded.text[0]).all()
    assert np.isfinite(embedded.text[1:]).all()


def test_joined_texts_skip_empty_columns(regression_data: ExperimentData) -> None:
    data = regression_data.take(np.arange(2))
    texts = replace(data, texts=data.texts.assign(tags=["Trading", None]))
    assert joined_texts(texts) == [f"{data.texts.title[0]}\nTrading", data.texts.title[1]]
