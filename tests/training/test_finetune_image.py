"""Tests of image fine-tuning against the real EfficientNet-Lite0 weights, on CPU, with a planted colour."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sklearn.linear_model import RidgeCV

from encoders.image import get_image_backbone, load_image_encoder
from training.baselines import RidgeOnEmbedding
from training.experiment_data import ExperimentData
from training.finetune_image import (
    ImageFineTuneConfig,
    ImageFineTuneConfigError,
    embed_from_trunk,
    fine_tune_image_encoder,
)
from training.finetune_model import FineTunedImageModel, with_image_embeddings
from training.image_augment import (
    ImageAugmentation,
    ImageAugmentationError,
    augmented_view,
    center_view,
    resize_image,
    view_generator,
)
from training.image_network import SplitEfficientNetLite, load_pretrained

SPEC = get_image_backbone("efficientnet_lite0")
TAIL_PREFIXES = ("network._blocks.15.", "network._conv_head.", "network._bn1.")
# A zero head makes the starting validation loss the label variance, so the test can see it fall
# within a few small epochs. The linear probe would start close to its end point.
CONFIG = ImageFineTuneConfig(
    trainable_blocks=1,
    learning_rate=3e-4,
    head_learning_rate=1e-3,
    head_init="zeros",
    max_epochs=3,
    patience=3,
    validation_share=0.25,
    batch_size=8,
    device="cpu",
    threads=2,
    seed=0,
    augmentation=ImageAugmentation(crop_scale=(0.6, 1.0), brightness=0.1, contrast=0.1, saturation=0.1),
)


def planted_images(count: int, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """Return `count` small noisy images and labels that are 1.0 exactly where the drawn square is yellow.

    The other squares are dark purple. Square position and size vary, so the colour is the only signal.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 2).astype(np.float64)
    images = []
    for label in labels:
        noise = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)  # (H, W, 3)
        image = Image.fromarray(noise, mode="RGB")
        side = int(rng.integers(16, 28))
        left, top = int(rng.integers(0, 64 - side)), int(rng.integers(0, 48 - side))
        colour = (250, 220, 30) if label == 1.0 else (60, 20, 90)
        ImageDraw.Draw(image).rectangle((left, top, left + side, top + side), fill=colour)
        images.append(image)
    return images, labels


def resized(images: list[Image.Image], keys: list[str]) -> dict[str, torch.Tensor]:
    return {key: resize_image(image, SPEC) for key, image in zip(keys, images, strict=True)}


@pytest.fixture(scope="module")
def fine_tuned() -> tuple[Any, Any, list[str], list[Image.Image], np.ndarray]:
    images, labels = planted_images(48)
    keys = [f"G{index:03d}" for index in range(len(images))]
    trunk = CONFIG.trunk_features(resized(images, keys))
    result = fine_tune_image_encoder(keys, labels, "regression", trunk, CONFIG)
    return result, trunk, keys, images, labels


def test_fine_tune_lowers_validation_loss(fine_tuned) -> None:
    result, _, _, _, _ = fine_tuned
    assert result.best_epoch >= 1
    assert result.history[result.best_epoch].validation_loss < result.history[0].validation_loss


def test_fine_tune_changes_only_tail(fine_tuned) -> None:
    result, _, _, _, _ = fine_tuned
    pretrained = load_pretrained(SPEC).state_dict()
    tuned = result.network.pooled.state_dict()
    assert pretrained.keys() == tuned.keys()
    changed = {name for name in pretrained if not torch.equal(pretrained[name], tuned[name].cpu())}
    assert changed, "no backbone weight changed"
    assert all(name.startswith(TAIL_PREFIXES) for name in changed), sorted(changed)[:5]
    for prefix in TAIL_PREFIXES:
        assert any(name.startswith(prefix) for name in changed), prefix


def test_fine_tune_keeps_batch_norm_statistics(fine_tuned) -> None:
    result, _, _, _, _ = fine_tuned
    pretrained = load_pretrained(SPEC).state_dict()
    tuned = result.network.pooled.state_dict()
    statistics = [name for name in pretrained if "running_" in name or "num_batches_tracked" in name]
    assert any(name.startswith(TAIL_PREFIXES) for name in statistics)
    for name in statistics:
        assert torch.equal(pretrained[name], tuned[name]), name


def test_fine_tuned_encoder_has_new_model_id(fine_tuned) -> None:
    result, _, _, _, _ = fine_tuned
    frozen = load_image_encoder("efficientnet_lite0", device="cpu")
    assert result.encoder.model_id != frozen.model_id
    assert result.encoder.model_id.startswith("efficientnet_lite0.imagenet.224@")
    assert result.encoder.embedding_dim == frozen.embedding_dim == 1280


def test_fine_tuned_encoder_embeds_like_trunk_path(fine_tuned) -> None:
    result, trunk, keys, images, _ = fine_tuned
    vectors = result.encoder.embed(images[:6])
    assert vectors.shape == (6, 1280)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    from_trunk = result.embed(trunk, keys[:6])
    np.testing.assert_allclose(from_trunk, vectors, rtol=0, atol=1e-4 * np.abs(vectors).max())


def test_fine_tuned_features_fit_planted_colour_better(fine_tuned) -> None:
    result, trunk, keys, _, labels = fine_tuned
    frozen_network = SplitEfficientNetLite(load_pretrained(SPEC), SPEC, tail_blocks=1)
    frozen = embed_from_trunk(frozen_network, trunk, keys)  # (48, 1280)
    tuned = result.embed(trunk, keys)  # (48, 1280)

    # Leave-one-out ridge error (negative MSE, higher is better) over all rows, most of which the
    # tail was trained on. This checks that the tail moved towards the signal, not that it generalises.
    def probe_score(features: np.ndarray) -> float:
        return float(RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(features, labels).best_score_)

    assert probe_score(tuned) > probe_score(frozen)


def test_trunk_features_are_reproducible(fine_tuned) -> None:
    _, trunk, keys, _, _ = fine_tuned
    first = trunk.get(keys[:4], view=1)
    assert first.shape == (4, 192, 7, 7)
    assert trunk.computed_views() == [0, 1, 2, 3]
    assert torch.equal(trunk.get(keys[:4], view=1), first)
    fresh = CONFIG.trunk_features(trunk.images)
    torch.testing.assert_close(fresh.get(keys[:4], view=1), first)
    assert not torch.equal(trunk.get(keys[:4], view=2), first)


def test_trunk_settings_mismatch_rejected(fine_tuned) -> None:
    _, trunk, keys, _, labels = fine_tuned
    with pytest.raises(ValueError, match="computed with seed=0, not 1"):
        fine_tune_image_encoder(keys, labels, "regression", trunk, replace(CONFIG, seed=1))


def test_augmented_view_is_seeded() -> None:
    images, _ = planted_images(1)
    pixels = resize_image(images[0], SPEC)
    augmentation = ImageAugmentation(hue=0.05)

    first = augmented_view(pixels, 224, augmentation, view_generator(0, "G000", 1))
    again = augmented_view(pixels, 224, augmentation, view_generator(0, "G000", 1))
    other_view = augmented_view(pixels, 224, augmentation, view_generator(0, "G000", 2))
    other_seed = augmented_view(pixels, 224, augmentation, view_generator(1, "G000", 1))

    assert first.shape == (3, 224, 224)
    assert first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert not torch.equal(first, other_view)
    assert not torch.equal(first, other_seed)


def test_augmented_view_without_augmentation_is_full_resize() -> None:
    pixels = (
        torch.arange(3 * 256 * 256, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(3, 256, 256)
    )
    identity = ImageAugmentation(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_probability=0.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
    )
    view = augmented_view(pixels, 256, identity, view_generator(0, "key", 1))
    assert torch.equal(view, pixels)


def test_center_view_matches_encoder_input() -> None:
    images, _ = planted_images(2)
    encoder = load_image_encoder("efficientnet_lite0", device="cpu")
    expected = encoder.preprocess(images)  # (2, 3, 224, 224) float32
    crops = torch.stack([center_view(resize_image(image, SPEC), 224) for image in images])
    mean = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    torch.testing.assert_close((crops.float() / 255.0 - mean) / std, expected, rtol=0, atol=1e-6)


def test_fine_tuned_image_model_predicts_held_out_rows(binary_data: ExperimentData) -> None:
    data = binary_data.take(np.arange(40))
    images, _ = planted_images(40, seed=1)
    image = np.zeros((40, 1280), dtype=np.float32)
    image[0] = np.nan
    data = replace(data, image=image)
    config = ImageFineTuneConfig(
        max_epochs=2, patience=2, augmented_views=1, batch_size=16, device="cpu", seed=0
    )
    model = FineTunedImageModel(
        lambda: RidgeOnEmbedding("image"), resized(images, list(data.product_ids)), config
    )

    model.fit(data.take(np.arange(30)))
    predicted = model.predict(data.take(np.arange(30, 40)))

    assert predicted.shape == (10,)
    assert np.isfinite(predicted).all()
    assert ((predicted >= 0.0) & (predicted <= 1.0)).all()
    assert model.fine_tune is not None
    assert len(model.fine_tune.history) == 3
    assert model.trunk.computed_views() == [0, 1]
    embedded = with_image_embeddings(data.take(np.arange(3)), model.fine_tune, model.trunk)
    assert embedded.image.shape == (3, 1280)
    assert np.isnan(embedded.image[0]).all()
    assert np.isfinite(embedded.image[1:]).all()


def test_binary_labels_checked(fine_tuned) -> None:
    _, trunk, keys, _, labels = fine_tuned
    with pytest.raises(ValueError, match="binary labels must be 0 or 1"):
        fine_tune_image_encoder(keys, labels * 2, "binary", trunk, CONFIG)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("trainable_blocks", 0),
        ("learning_rate", 0.0),
        ("head_learning_rate", -1.0),
        ("weight_decay", -0.1),
        ("dropout", 1.0),
        ("max_epochs", 0),
        ("patience", 0),
        ("validation_share", 0.5),
        ("batch_size", 0),
        ("head_init", "random"),
        ("backbone", "resnet18"),
        ("backbone", "vit_b16"),
        ("augmentation", {"hue": 0.1}),
        ("augmented_views", 0),
        ("augmented_views", 1.5),
        ("threads", 0),
        ("max_epochs", 2.5),
        ("learning_rate", float("nan")),
    ],
)
def test_config_error_names_setting(setting: str, value: Any) -> None:
    with pytest.raises(ImageFineTuneConfigError, match=f"ImageFineTuneConfig.{setting} "):
        ImageFineTuneConfig(**{setting: value})


def test_too_many_trainable_blocks_rejected() -> None:
    with pytest.raises(
        ImageFineTuneConfigError, match="trainable_blocks must be at most 16 for efficientnet_lite0"
    ):
        ImageFineTuneConfig(trainable_blocks=17)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.9, 0.5)),
        ("crop_scale", (0.5, 1.5)),
        ("crop_scale", [0.5, 1.0]),
        ("crop_ratio", (0.0, 1.0)),
        ("flip_probability", 1.5),
        ("brightness", 1.0),
        ("contrast", -0.1),
        ("saturation", float("inf")),
        ("hue", 0.6),
    ],
)
def test_augmentation_error_names_setting(setting: str, value: Any) -> None:
    with pytest.raises(ImageAugmentationError, match=f"ImageAugmentation.{setting} "):
        ImageAugmentation(**{setting: value})
