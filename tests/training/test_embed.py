"""Tests of batch embedding of catalogue images and texts, with small real encoders and the real models."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.text.encoder import TextEmbeddings
from training.catalogue import Catalogue, load_catalogue
from training.embed import embed_images, embed_texts
from training.sample import generate_sample_catalogue
from training.spec import load_spec


class MeanColourEncoder:
    """Image encoder whose embedding is the mean RGB colour in [0, 1], and which records batch sizes."""

    model_id = "mean-colour"
    embedding_dim = 3

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.batch_sizes.append(len(images))
        return np.array([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255.0 for image in images])


class WordCountEncoder:
    """Text encoder whose embedding is (characters, words, lines), truncating above `max_words` words."""

    model_id = "word-count"
    embedding_dim = 3

    def __init__(self, max_words: int = 20) -> None:
        self.max_words = max_words
        self.batch_sizes: list[int] = []

    def embed(self, texts: Sequence[str]) -> TextEmbeddings:
        self.batch_sizes.append(len(texts))
        words = np.array([len(text.split()) for text in texts], dtype=np.int64)
        vectors = np.array(
            [[len(text), len(text.split()), text.count("\n") + 1] for text in texts], dtype=np.float32
        )
        return TextEmbeddings(
            vectors=vectors.reshape(len(texts), self.embedding_dim),
            truncated=words > self.max_words,
            token_counts=np.minimum(words, self.max_words) + 2,
        )


class WrongShapeEncoder(MeanColourEncoder):
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.zeros((len(images), 2), dtype=np.float32)


class NanEncoder(MeanColourEncoder):
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.full((len(images), 3), np.nan, dtype=np.float32)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    root = generate_sample_catalogue(tmp_path_factory.mktemp("sample"), n_products=23, seed=0)
    return load_catalogue(root, load_spec("sample"))


def mean_colour(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255.0


def test_embed_images_order(sample: Catalogue) -> None:
    encoder = MeanColourEncoder()
    vectors, ok = embed_images(sample, encoder, batch_size=5, progress=False)
    assert vectors.shape == (23, 3)
    assert vectors.dtype == np.float32
    assert ok.all()
    assert encoder.batch_sizes == [5, 5, 5, 5, 3]
    for index, path in enumerate(sample.image_paths()):
        assert path is not None
        np.testing.assert_allclose(vectors[index], mean_colour(path), rtol=1e-6)


def test_embed_images_batch_of_one(sample: Catalogue) -> None:
    part = sample.subset([0, 1, 2])
    encoder = MeanColourEncoder()
    vectors, ok = embed_images(part, encoder, batch_size=1, decode_workers=1, progress=False)
    assert encoder.batch_sizes == [1, 1, 1]
    assert ok.all()
    full, _ = embed_images(sample, MeanColourEncoder(), batch_size=64, progress=False)
    np.testing.assert_array_equal(vectors, full[:3])


def test_embed_images_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = generate_sample_catalogue(tmp_path, n_products=8, seed=1)
    catalogue = load_catalogue(root, load_spec("sample"))
    ids = catalogue.product_ids
    images_dir = root / "images"
    (images_dir / f"{ids[1]}.png").write_bytes(b"not an image at all")
    (images_dir / f"{ids[3]}.png").write_bytes((images_dir / f"{ids[3]}.png").read_bytes()[:60])  # truncated
    (images_dir / f"{ids[5]}.png").unlink()  # removed after loading: a read failure
    catalogue.frame.loc[ids[6], "image_path"] = None  # a product without an image file

    with caplog.at_level(logging.WARNING, logger="training.embed"):
        vectors, ok = embed_images(catalogue, MeanColourEncoder(), batch_size=3, progress=False)

    assert ok.tolist() == [True, False, True, False, True, False, False, True]
    assert not vectors[~ok].any()
    assert vectors[ok].any(axis=1).all()
    for index in (1, 3, 5):
        assert f"product {ids[index]}:" in caplog.text
    assert f"product {ids[6]}:" not in caplog.text


def test_embed_images_pixel_limit(sample: Catalogue, caplog: pytest.LogCaptureFixture) -> None:
    part = sample.subset([0, 1])
    with caplog.at_level(logging.WARNING, logger="training.embed"):
        vectors, ok = embed_images(part, MeanColourEncoder(), max_pixels=100, progress=False)
    assert not ok.any()
    assert not vectors.any()
    assert "more than the limit of 100 pixels" in caplog.text


def test_embed_images_empty_catalogue(sample: Catalogue) -> None:
    vectors, ok = embed_images(sample.subset([]), MeanColourEncoder(), progress=False)
    assert vectors.shape == (0, 3)
    assert ok.shape == (0,)


def test_embed_images_wrong_shape(sample: Catalogue) -> None:
    with pytest.raises(RuntimeError, match=r"shape \(4, 2\), expected \(4, 3\)"):
        embed_images(sample.subset([0, 1, 2, 3]), WrongShapeEncoder(), progress=False)


def test_embed_images_non_finite(sample: Catalogue) -> None:
    with pytest.raises(RuntimeError, match="non-finite embeddings for 2 product"):
        embed_images(sample.subset([0, 1]), NanEncoder(), progress=False)


def test_embed_images_invalid_batch_size(sample: Catalogue) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        embed_images(sample, MeanColourEncoder(), batch_size=0)


def test_embed_texts_order(sample: Catalogue, caplog: pytest.LogCaptureFixture) -> None:
    texts = sample.texts()
    encoder = WordCountEncoder(max_words=25)
    with caplog.at_level(logging.INFO, logger="training.embed"):
        embeddings = embed_texts(sample, encoder, batch_size=4, progress=False)
    assert embeddings.vectors.shape == (23, 3)
    assert embeddings.vectors.dtype == np.float32
    assert encoder.batch_sizes == [4, 4, 4, 4, 4, 3]
    # Texts are embedded in length order but returned in catalogue order.
    expected = encoder.embed(texts)
    np.testing.assert_array_equal(embeddings.vectors, expected.vectors)
    np.testing.assert_array_equal(embeddings.truncated, expected.truncated)
    np.testing.assert_array_equal(embeddings.token_counts, expected.token_counts)
    assert embeddings.truncated.any()
    assert f"{int(expected.truncated.sum())} of 23 texts were longer than the token limit" in caplog.text


def test_embed_texts_empty_catalogue(sample: Catalogue) -> None:
    embeddings = embed_texts(sample.subset([]), WordCountEncoder(), progress=False)
    assert embeddings.vectors.shape == (0, 3)
    assert embeddings.truncated.shape == (0,)
    assert embeddings.token_counts.shape == (0,)


def test_embed_real_encoders(sample: Catalogue) -> None:
    from encoders.image import load_image_encoder
    from encoders.text import load_text_encoder

    part = sample.subset(list(range(8)))
    image_encoder = load_image_encoder(device="cpu")
    text_encoder = load_text_encoder(device="cpu")

    vectors, ok = embed_images(part, image_encoder, batch_size=3, progress=False)
    assert vectors.shape == (8, image_encoder.embedding_dim)
    assert ok.all()
    assert np.isfinite(vectors).all()
    assert np.abs(vectors).sum(axis=1).min() > 0
    images = [Image.open(path).convert("RGB") for path in part.image_paths() if path is not None]
    np.testing.assert_allclose(vectors, image_encoder.embed(images), rtol=1e-4, atol=1e-5)

    embeddings = embed_texts(part, text_encoder, batch_size=3, progress=False)
    assert embeddings.vectors.shape == (8, text_encoder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings.vectors, axis=1), 1.0, rtol=1e-5)
    assert not embeddings.truncated.any()
    direct = text_encoder.embed(part.texts())
    np.testing.assert_allclose(embeddings.vectors, direct.vectors, atol=1e-5)
