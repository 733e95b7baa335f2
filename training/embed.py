"""Embed a catalogue's images and texts in batches, with progress bars and per-product failure logs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from encoders.image.decoding import ImageDecodeError, decode_image
from encoders.text.encoder import TextEmbeddings
from training.catalogue import Catalogue

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # same default as the image encoder service's max_image_pixels


class ImageEmbedder(Protocol):
    """Interface of an image encoder that embed_images uses, as encoders.image.ImageEncoder provides it."""

    model_id: str
    embedding_dim: int

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...  # (N, D) float32


class TextEmbedder(Protocol):
    """Interface of a text encoder that embed_texts uses, as encoders.text.TextEncoder provides it."""

    model_id: str
    embedding_dim: int

    def embed(self, texts: Sequence[str]) -> TextEmbeddings: ...


def embed_images(
    catalogue: Catalogue,
    encoder: ImageEmbedder,
    *,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_workers: int = 4,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed every product's image and return (vectors (N, D) float32, ok (N,) bool) in catalogue order.

    A product without an image file, or whose file cannot be read or decoded, gets a zero vector
    and ok False. Each read or decode failure is logged with the product id. Files are decoded by
    `decode_workers` threads, one batch ahead of the encoder, so at most two batches of decoded
    images are held at a time. `progress` None shows a progress bar only when stderr is a terminal.
    Raises RuntimeError when the encoder returns a wrong shape or non-finite values.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if decode_workers < 1:
        raise ValueError(f"decode_workers must be at least 1, got {decode_workers}")
    product_ids = catalogue.product_ids
    paths = catalogue.image_paths()
    count = len(product_ids)
    vectors = np.zeros((count, encoder.embedding_dim), dtype=np.float32)  # (N, D)
    ok = np.zeros(count, dtype=bool)  # (N,)
    failed: list[str] = []
    batches = [np.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]

    with (
        ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode") as pool,
        tqdm(total=count, desc="image embeddings", unit="image", disable=_disable(progress)) as bar,
    ):

        def submit(batch: np.ndarray) -> list[Future[Image.Image | None]]:
            return [pool.submit(_load_image, product_ids[i], paths[i], max_pixels) for i in batch]

        pending = submit(batches[0]) if batches else []
        for number, batch in enumerate(batches):
            futures = pending
            # Queue the next batch's decoding now, so it runs while this batch is embedded.
            pending = submit(batches[number + 1]) if number + 1 < len(batches) else []
            failed.extend(_embed_batch(encoder, batch, futures, product_ids, paths, vectors, ok))
            bar.update(len(batch))

    logger.info(
        "embedded %d of %d images with %s (%d without an image file, %d failed to read or decode)",
        int(ok.sum()),
        count,
        encoder.model_id,
        sum(path is None for path in paths),
        len(failed),
    )
    return vectors, ok


def embed_texts(
    catalogue: Catalogue, encoder: TextEmbedder, *, batch_size: int = 64, progress: bool | None = None
) -> TextEmbeddings:
    """Embed every product's text (title, then the other text columns) in catalogue order.

    Texts are embedded in order of length, so each batch pads to similar lengths, and the rows are
    put back in catalogue order. `progress` None shows a progress bar only when stderr is a terminal.
    Raises RuntimeError when the encoder returns a wrong shape or non-finite values.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    texts = catalogue.texts()
    product_ids = catalogue.product_ids
    count = len(texts)
    vectors = np.zeros((count, encoder.embedding_dim), dtype=np.float32)  # (N, D)
    truncated = np.zeros(count, dtype=bool)  # (N,)
    token_counts = np.zeros(count, dtype=np.int64)  # (N,)

    order = np.argsort([len(text) for text in texts], kind="stable")
    with tqdm(total=count, desc="text embeddings", unit="text", disable=_disable(progress)) as bar:
        for start in range(0, count, batch_size):
            positions = order[start : start + batch_size]
            embeddings = encoder.embed([texts[i] for i in positions])
            _check_vectors(embeddings.vectors, [product_ids[i] for i in positions], encoder)
            vectors[positions] = embeddings.vectors
            truncated[positions] = embeddings.truncated
            token_counts[positions] = embeddings.token_counts
            bar.update(len(positions))

    if truncated.any():
        logger.info(
            "%d of %d texts were longer than the token limit of %s and were truncated",
            int(truncated.sum()),
            count,
            encoder.model_id,
        )
    return TextEmbeddings(vectors=vectors, truncated=truncated, token_counts=token_counts)


def _embed_batch(
    encoder: ImageEmbedder,
    batch: np.ndarray,
    futures: list[Future[Image.Image | None]],
    product_ids: list[str],
    paths: list[Path | None],
    vectors: np.ndarray,
    ok: np.ndarray,
) -> list[str]:
    """Embed one batch's decoded images into `vectors` and `ok`, and return the ids whose file failed."""
    # The decoded images are local to this call, so they are freed before the batch after next is queued.
    images: list[Image.Image] = []
    positions: list[int] = []
    failed: list[str] = []
    for position, future in zip(batch, futures, strict=True):
        image = future.result()
        if image is not None:
            images.append(image)
            positions.append(int(position))
        elif paths[position] is not None:
            failed.append(product_ids[position])

    if images:
        embedded = encoder.embed(images)  # (B, D)
        _check_vectors(embedded, [product_ids[i] for i in positions], encoder)
        vectors[positions] = embedded
        ok[positions] = True
    return failed


def _load_image(product_id: str, path: Path | None, max_pixels: int) -> Image.Image | None:
    """Read and decode one image file, or return None when there is none or it fails (logged)."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        logger.warning("product %s: cannot read image file %s: %s", product_id, path, error)
        return None
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as error:
        logger.warning("product %s: cannot decode image file %s: %s", product_id, path, error)
        return None


def _check_vectors(
    vectors: np.ndarray, product_ids: list[str], encoder: ImageEmbedder | TextEmbedder
) -> None:
    expected = (len(product_ids), encoder.embedding_dim)
    if vectors.shape != expected:
        raise RuntimeError(
            f"{encoder.model_id} returned embeddings of shape {vectors.shape}, expected {expected}"
        )
    finite = np.isfinite(vectors).all(axis=1)  # (B,)
    if not finite.all():
        bad = [product_id for product_id, good in zip(product_ids, finite, strict=True) if not good]
        raise RuntimeError(
            f"{encoder.model_id} returned non-finite embeddings for {len(bad)} product(s), "
            f"first {', '.join(bad[:5])}"
        )


def _disable(progress: bool | None) -> bool | None:
    # tqdm's disable=None turns the bar off when its output stream is not a terminal.
    return None if progress is None else not progress
