"""Tests of encoders.image.ImageEncoder with the real EfficientNet-Lite0 weights on CPU."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.image import ImageEncoder, decode_image, load_image_encoder
from encoders.image.backbones import IMAGE_BACKBONES

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = Path(os.environ.get("PQ_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", device="cpu")


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def gradient_image(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    ramp = np.linspace(0.2, 1.0, width)[None, :, None]  # (1, W, 1)
    pixels = np.broadcast_to(ramp * np.array(colour)[None, None, :], (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [
        random_image(300, 200, seed=1),
        gradient_image(180, 320, (255, 120, 0)),
        random_image(224, 224, seed=2),
        gradient_image(640, 480, (20, 90, 250)),
    ]


def test_model_id_format(encoder: ImageEncoder) -> None:
    weights = IMAGE_BACKBONES["efficientnet_lite0"].resolve_weights_path()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    assert re.fullmatch(r"efficientnet_lite0\.imagenet\.224@[0-9a-f]{8}", encoder.model_id)
    assert encoder.model_id.endswith("@" + digest[:8])
    assert encoder.embedding_dim == 1280
    assert encoder.device == torch.device("cpu")


def test_model_in_eval_mode(encoder: ImageEncoder) -> None:
    assert not any(module.training for module in encoder._model.modules())


def test_preprocess_shape(encoder: ImageEncoder, images: list[Image.Image]) -> None:
    batch = encoder.preprocess(images)

    assert batch.shape == (4, 3, 224, 224)
    assert batch.dtype == torch.float32


def test_preprocess_empty(encoder: ImageEncoder) -> None:
    assert encoder.preprocess([]).shape == (0, 3, 224, 224)


def test_preprocess_normalisation(encoder: ImageEncoder) -> None:
    # EfficientNet-Lite inputs are (pixel - 127) / 128: grey 127 maps to 0, black and white to about -1 and 1.
    batch = encoder.preprocess([Image.new("RGB", (50, 50), (value, value, value)) for value in (127, 0, 255)])

    assert torch.allclose(batch[0], torch.zeros(()), atol=1e-6)
    assert torch.allclose(batch[1], torch.full((), -127 / 128), atol=1e-6)
    assert torch.allclose(batch[2], torch.full((), 1.0), atol=1e-6)


def test_preprocess_center_crop(encoder: ImageEncoder) -> None:
    # A wide image: left and right thirds black, centre white. The crop keeps only the centre.
    pixels = np.zeros((256, 768, 3), dtype=np.uint8)
    pixels[:, 256:512] = 255

    batch = encoder.preprocess([Image.fromarray(pixels)])

    assert torch.allclose(batch, torch.full((), 1.0), atol=1e-6)


def test_embed_shape_dtype(encoder: ImageEncoder, images: list[Image.Image]) -> None:
    vectors = encoder.embed(images)

    assert vectors.shape == (4, 1280)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    # Features are averages of ReLU6 outputs.
    assert vectors.min() >= 0.0
    assert vectors.max() <= 6.0


def test_embed_deterministic(encoder: ImageEncoder, images: list[Image.Image]) -> None:
    first = encoder.embed(images)
    second = encoder.embed(images)

    np.testing.assert_array_equal(first, second)


def test_embed_batch_equals_single(encoder: ImageEncoder, images: list[Image.Image]) -> None:
    batched = encoder.embed(images)

    for index, image in enumerate(images):
        single = encoder.embed([image])
        np.testing.assert_allclose(single[0], batched[index], rtol=0, atol=1e-5)


def test_embed_distinguishes_images(encoder: ImageEncoder, images: list[Image.Image]) -> None:
    vectors = encoder.embed(images)

    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(vectors[i] - vectors[j]).max() > 1e-3


def test_embed_empty(encoder: ImageEncoder) -> None:
    vectors = encoder.embed([])

    assert vectors.shape == (0, 1280)
    assert vectors.dtype == np.float32


def test_embed_rejects_non_rgb(encoder: ImageEncoder) -> None:
    with pytest.raises(ValueError, match=r"images\[1\] has mode RGBA"):
        encoder.embed([Image.new("RGB", (8, 8)), Image.new("RGBA", (8, 8))])


def dataset_images(limit: int) -> Iterator[Path]:
    directory = DATASETS_DIR / "boardgames" / "images"
    if not directory.is_dir():
        pytest.skip(f"real images not found in {directory}; set PQ_DATASETS_DIR")
    yield from sorted(directory.glob("*.jpg"))[:limit]


def test_normalisation_matches_weights(encoder: ImageEncoder) -> None:
    # The stem batch norm stores the variance of its input over the training images. On real photos
    # the normalisation the weights were trained with gives about that variance (ratio near 1). The
    # ImageNet mean and std would give about 5 times as much.
    photos = [decode_image(path.read_bytes(), max_pixels=40_000_000) for path in dataset_images(32)]
    batch = encoder.preprocess(photos)  # (N, 3, 224, 224)
    network = encoder._model.network

    with torch.inference_mode():
        stem = network._conv_stem(batch)  # (N, 32, 112, 112)
    ratio = stem.var(dim=(0, 2, 3)) / network._bn0.running_var  # (32,)

    assert 0.5 < ratio.median().item() < 2.0
