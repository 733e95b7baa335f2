"""Tests of the image backbone registry and of loading weights from local files only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from encoders.image import (
    DEFAULT_IMAGE_BACKBONE,
    IMAGE_BACKBONES,
    BackboneUnavailableError,
    get_image_backbone,
    load_image_encoder,
    resolve_device,
)
from encoders.image.encoder import weights_sha256


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision resnet18 state_dict saved to a file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_registry_entries() -> None:
    assert DEFAULT_IMAGE_BACKBONE == "efficientnet_lite0"
    assert set(IMAGE_BACKBONES) == {"efficientnet_lite0", "resnet18"}
    assert IMAGE_BACKBONES["efficientnet_lite0"].embedding_dim == 1280
    assert IMAGE_BACKBONES["resnet18"].embedding_dim == 512
    for name, spec in IMAGE_BACKBONES.items():
        assert spec.name == name
        assert spec.input_size <= spec.resize_size
        assert len(spec.mean) == 3
        assert len(spec.std) == 3


def test_registry_unknown_name() -> None:
    expected = "unknown image backbone 'vgg'; known backbones: efficientnet_lite0, resnet18"

    with pytest.raises(ValueError, match=expected):
        get_image_backbone("vgg")


def test_resnet18_from_file(resnet18_weights: Path) -> None:
    digest = hashlib.sha256(resnet18_weights.read_bytes()).hexdigest()

    encoder = load_image_encoder("resnet18", device="cpu", weights_path=resnet18_weights)
    images = [Image.new("RGB", (300, 200), (10, 200, 30)), Image.new("RGB", (64, 64), (255, 255, 255))]
    vectors = encoder.embed(images)

    assert encoder.model_id == f"resnet18.imagenet1k_v1.224@{digest[:8]}"
    assert encoder.embedding_dim == 512
    assert vectors.shape == (2, 512)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()


def test_resnet18_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.pth"

    with pytest.raises(BackboneUnavailableError) as raised:
        load_image_encoder("resnet18", device="cpu", weights_path=missing)

    message = str(raised.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "PQ_IMAGE_ENCODER_WEIGHTS_PATH" in message
    assert "never downloaded" in message


def test_resnet18_missing_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"

    with pytest.raises(BackboneUnavailableError, match="resnet18-f37072fd.pth") as raised:
        load_image_encoder("resnet18", device="cpu")

    assert str(expected) in str(raised.value)
    assert not expected.exists()


def test_resnet18_default_location(
    resnet18_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(resnet18_weights.read_bytes())

    encoder = load_image_encoder("resnet18", device="cpu")

    assert encoder.embedding_dim == 512


def test_weights_not_state_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all" * 10)

    with pytest.raises(BackboneUnavailableError, match="is not a readable torch state_dict"):
        load_image_encoder("resnet18", device="cpu", weights_path=garbage)


def test_weights_of_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)

    with pytest.raises(BackboneUnavailableError, match="does not match the architecture"):
        load_image_encoder("resnet18", device="cpu", weights_path=path)


def test_weights_tensor_not_mapping(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)

    with pytest.raises(BackboneUnavailableError, match="contains a Tensor, not a state_dict"):
        load_image_encoder("resnet18", device="cpu", weights_path=path)


def test_weights_sha256_cached(resnet18_weights: Path) -> None:
    data = resnet18_weights.read_bytes()
    first = weights_sha256(resnet18_weights, data)

    # The digest is cached by file identity and modification time, so the bytes are not hashed again.
    assert weights_sha256(resnet18_weights, b"other bytes") == first
    assert first == hashlib.sha256(data).hexdigest()


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"

    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device 'tpu9'"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_no_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
