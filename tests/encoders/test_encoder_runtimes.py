"""Tests of the encoders' inference runtimes: ONNX Runtime and channels-last against the torch reference.

The real EfficientNet-Lite0 and all-MiniLM-L6-v2 models are exported once per module into a
temporary cache directory, which takes about 10 to 20 s each on 2 CPU cores.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.image import (
    IMAGE_RUNTIME_TOLERANCE,
    ImageEncoder,
    InferenceRuntimeError,
    decode_image,
    load_image_encoder,
)
from encoders.image.backbones import IMAGE_BACKBONES
from encoders.onnx_model import onnx_cache_path
from encoders.runtime import onnxruntime_runs_on, resolve_runtime
from encoders.text import TEXT_RUNTIME_TOLERANCE, TextEncoder, load_text_encoder
from tests.encoders.test_image_encoder import DATASETS_DIR, gradient_image, random_image
from tests.encoders.test_text_encoder import CHINESE_TEXTS, LONG_TEXT, TEXTS

RUNTIME_TEXTS = [*TEXTS, *CHINESE_TEXTS, LONG_TEXT, ""]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_image_encoder() -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def onnx_image_encoder(cache_dir: Path) -> ImageEncoder:
    return load_image_encoder("efficientnet_lite0", device="cpu", runtime="onnx", onnx_cache_dir=cache_dir)


@pytest.fixture(scope="module")
def torch_text_encoder() -> TextEncoder:
    return load_text_encoder(device="cpu")


@pytest.fixture(scope="module")
def onnx_text_encoder(cache_dir: Path) -> TextEncoder:
    return load_text_encoder(device="cpu", runtime="onnx", onnx_cache_dir=cache_dir)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Generated images of several sizes, and real box-art photos when the datasets are present."""
    generated = [
        random_image(300, 200, seed=1),
        gradient_image(180, 320, (255, 120, 0)),
        gradient_image(640, 480, (20, 90, 250)),
        random_image(2000, 90, seed=3),  # wider than MAX_ASPECT_RATIO, so it is cropped first
    ]
    directory = DATASETS_DIR / "boardgames" / "images"
    paths = sorted(directory.glob("*.jpg"))[:4] if directory.is_dir() else []
    photos = [decode_image(path.read_bytes(), max_pixels=40_000_000) for path in paths]
    return generated + photos


def test_onnx_image_matches_torch(
    torch_image_encoder: ImageEncoder, onnx_image_encoder: ImageEncoder, images: list[Image.Image]
) -> None:
    reference = torch_image_encoder.embed(images)
    vectors = onnx_image_encoder.embed(images)

    assert onnx_image_encoder.runtime == "onnx"
    assert onnx_image_encoder.model_id == torch_image_encoder.model_id
    assert vectors.shape == reference.shape
    assert vectors.dtype == np.float32
    assert IMAGE_RUNTIME_TOLERANCE.violations(vectors, reference) == []


def test_channels_last_image_matches_torch(
    torch_image_encoder: ImageEncoder, images: list[Image.Image]
) -> None:
    encoder = load_image_encoder("efficientnet_lite0", device="cpu", runtime="torch_channels_last")

    vectors = encoder.embed(images)

    assert encoder.runtime == "torch_channels_last"
    assert encoder.model_id == torch_image_encoder.model_id
    assert IMAGE_RUNTIME_TOLERANCE.violations(vectors, torch_image_encoder.embed(images)) == []


def test_onnx_image_single_equals_batch_row(
    onnx_image_encoder: ImageEncoder, images: list[Image.Image]
) -> None:
    batched = onnx_image_encoder.embed(images)

    for index, image in enumerate(images):
        single = onnx_image_encoder.embed([image])
        assert IMAGE_RUNTIME_TOLERANCE.violations(single, batched[index : index + 1]) == [], f"image {index}"


def test_onnx_image_empty_batch(onnx_image_encoder: ImageEncoder) -> None:
    assert onnx_image_encoder.embed([]).shape == (0, 1280)


def test_onnx_text_matches_torch(torch_text_encoder: TextEncoder, onnx_text_encoder: TextEncoder) -> None:
    reference = torch_text_encoder.embed(RUNTIME_TEXTS)
    result = onnx_text_encoder.embed(RUNTIME_TEXTS)

    assert onnx_text_encoder.runtime == "onnx"
    assert onnx_text_encoder.model_id == torch_text_encoder.model_id
    assert result.vectors.shape == (len(RUNTIME_TEXTS), 384)
    assert result.vectors.dtype == np.float32
    assert TEXT_RUNTIME_TOLERANCE.violations(result.vectors, reference.vectors) == []
    assert result.token_counts.tolist() == reference.token_counts.tolist()
    assert result.truncated.tolist() == reference.truncated.tolist()
    assert bool(result.truncated[RUNTIME_TEXTS.index(LONG_TEXT)]) is True


def test_onnx_text_single_equals_batch_row(onnx_text_encoder: TextEncoder) -> None:
    batched = onnx_text_encoder.embed(RUNTIME_TEXTS)

    for index, text in enumerate(RUNTIME_TEXTS):
        single = onnx_text_encoder.embed([text])
        row = batched.vectors[index : index + 1]  # (1, 384)
        assert TEXT_RUNTIME_TOLERANCE.violations(single.vectors, row) == [], text[:40]
        assert single.token_counts[0] == batched.token_counts[index]


def test_onnx_text_concurrent_embed(onnx_text_encoder: TextEncoder) -> None:
    batches = [[text, LONG_TEXT] for text in TEXTS]
    expected = [onnx_text_encoder.embed(batch).vectors for batch in batches]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(onnx_text_encoder.embed, batches))

    for result, vectors in zip(results, expected, strict=True):
        np.testing.assert_allclose(result.vectors, vectors, atol=1e-6)


def _cache_files(directory: Path) -> dict[str, tuple[int, int]]:
    """Map each file in `directory` to its (inode, modification time), hidden temporary files included."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in directory.iterdir()}


def test_onnx_export_reused(
    onnx_image_encoder: ImageEncoder,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
    images: list[Image.Image],
) -> None:
    before = _cache_files(cache_dir)

    with caplog.at_level(logging.INFO, logger="encoders.onnx_model"):
        again = load_image_encoder(
            "efficientnet_lite0", device="cpu", runtime="onnx", onnx_cache_dir=cache_dir
        )

    assert _cache_files(cache_dir) == before
    assert "reusing the cached ONNX export" in caplog.text
    assert "exported" not in caplog.text
    np.testing.assert_array_equal(again.embed(images[:2]), onnx_image_encoder.embed(images[:2]))


def test_onnx_export_not_reused_for_other_weights(
    onnx_image_encoder: ImageEncoder, cache_dir: Path, tmp_path: Path, images: list[Image.Image]
) -> None:
    # The same architecture with one changed bias, so only the weights file's hash distinguishes them.
    state_dict = torch.load(IMAGE_BACKBONES["efficientnet_lite0"].resolve_weights_path(), weights_only=True)
    state_dict["_bn1.bias"] = state_dict["_bn1.bias"] + 0.5
    weights = tmp_path / "efficientnet-lite0-changed.pth"
    torch.save(state_dict, weights)
    before = _cache_files(cache_dir)

    changed = load_image_encoder(
        "efficientnet_lite0", device="cpu", weights_path=weights, runtime="onnx", onnx_cache_dir=cache_dir
    )
    reference = load_image_encoder("efficientnet_lite0", device="cpu", weights_path=weights)

    after = _cache_files(cache_dir)
    assert changed.model_id != onnx_image_encoder.model_id
    assert {name: after[name] for name in before} == before
    assert len(after) == len(before) + 1
    vectors = changed.embed(images[:2])
    assert IMAGE_RUNTIME_TOLERANCE.violations(vectors, reference.embed(images[:2])) == []
    assert np.abs(vectors - onnx_image_encoder.embed(images[:2])).max() > 0.1


def test_onnx_cache_path_names_weights(tmp_path: Path) -> None:
    first = onnx_cache_path(tmp_path, "efficientnet_lite0", "ab" * 32)
    second = onnx_cache_path(tmp_path, "efficientnet_lite0", "cd" * 32)

    assert first != second
    assert first.parent == tmp_path
    assert first.name.startswith("efficientnet_lite0-" + "ab" * 8)
    assert torch.__version__.split("+")[0] in first.name
    assert first.suffix == ".onnx"


def test_onnx_export_failure_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with pytest.raises(InferenceRuntimeError, match="runtime 'onnx'") as raised:
        load_image_encoder(
            "efficientnet_lite0", device="cpu", runtime="onnx", onnx_cache_dir=blocker / "cache"
        )

    assert "set the runtime to 'torch'" in str(raised.value)


def test_auto_falls_back_on_export_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with caplog.at_level(logging.WARNING):
        encoder = load_text_encoder(device="cpu", runtime="auto", onnx_cache_dir=blocker / "cache")

    assert encoder.runtime == "torch"
    assert "runtime 'auto' falls back to torch" in caplog.text
    assert encoder.embed(["still works"]).vectors.shape == (1, 384)


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make `import onnxruntime` fail as if the package were not installed."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    yield


def test_auto_without_onnxruntime(without_onnxruntime: None) -> None:
    encoder = load_image_encoder("efficientnet_lite0", device="cpu", runtime="auto")

    assert encoder.runtime == "torch"


def test_onnx_without_onnxruntime(without_onnxruntime: None, tmp_path: Path) -> None:
    with pytest.raises(InferenceRuntimeError, match="needs the onnxruntime package"):
        load_text_encoder(device="cpu", runtime="onnx", onnx_cache_dir=tmp_path)


def test_auto_prefers_onnx_on_cpu() -> None:
    runtime = resolve_runtime("auto", ("torch", "onnx", "auto"), device=torch.device("cpu"), encoder="text")

    assert runtime == "onnx"


@pytest.mark.skipif(onnxruntime_runs_on(torch.device("cuda")), reason="onnxruntime here has a CUDA provider")
def test_auto_keeps_torch_on_cuda_without_provider() -> None:
    # torch.device("cuda") needs no GPU; the choice depends only on onnxruntime's providers.
    runtime = resolve_runtime("auto", ("torch", "onnx", "auto"), device=torch.device("cuda"), encoder="image")

    assert runtime == "torch"


def test_unknown_runtime_rejected() -> None:
    with pytest.raises(ValueError, match="invalid runtime 'tensorrt' for the image encoder"):
        load_image_encoder("efficientnet_lite0", device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="invalid runtime 'torch_channels_last' for the text encoder"):
        load_text_encoder(device="cpu", runtime="torch_channels_last")


@pytest.mark.parametrize("threads", [0, -2, True, 1.5])
def test_invalid_threads_rejected(threads: object) -> None:
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        load_image_encoder("efficientnet_lite0", device="cpu", threads=threads)  # type: ignore[arg-type]


def test_threads_set_torch_threads() -> None:
    previous = torch.get_num_threads()
    try:
        load_image_encoder("efficientnet_lite0", device="cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_onnx_threads_default_to_affinity(onnx_image_encoder: ImageEncoder) -> None:
    session = onnx_image_encoder._onnx_model._session  # type: ignore[union-attr]

    assert session.get_session_options().intra_op_num_threads == len(os.sched_getaffinity(0))
