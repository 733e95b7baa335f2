"""Product images decoded and resized once, and seeded augmented views of them for fine-tuning.

The image encoder resizes each image so that its shorter side is the backbone's `resize_size`,
then crops the central `input_size` square. Fine-tuning keeps every image at that shorter side
as uint8 in memory, so each epoch crops from memory instead of decoding the file again.
`center_view` returns the encoder's own crop. `augmented_view` returns a random resized crop, a
horizontal flip and a colour jitter. Its random draws come from `view_generator`, which is
seeded by (seed, image key, view number), so a view does not depend on the fold or on the order
in which images are visited.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from encoders.image.backbones import ImageBackboneSpec
from encoders.image.decoding import ImageDecodeError, decode_image
from encoders.image.encoder import crop_to_aspect_ratio
from training.embed import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

CROP_ATTEMPTS = 10  # random crop draws before falling back to the central crop


class ImageAugmentationError(ValueError):
    """An augmentation setting is out of range or of the wrong type. The message names the setting."""


@dataclass(frozen=True)
class ImageAugmentation:
    """Strengths of the augmentation applied to training images."""

    # Share of the resized image's area that a random crop covers, drawn uniformly from this range.
    # The encoder's central crop covers at most 224 x 224 / (256 x 256) = 77 % of it.
    crop_scale: tuple[float, float] = (0.5, 1.0)
    # Width / height of the crop, drawn log-uniformly from this range, before it is resized to a square.
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_probability: float = 0.5  # probability of a horizontal flip
    # Colour jitter: brightness, contrast and saturation factors are drawn from [1 - s, 1 + s].
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    # Hue shift drawn from [-hue, hue] of the hue circle (at most 0.5). Off by default, because a hue shift
    # changes which colours a box shows, and colour may be part of what predicts the label.
    hue: float = 0.0

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or not all(_is_finite_number(bound) for bound in value)
            ):
                raise ImageAugmentationError(
                    f"ImageAugmentation.{name} must be a tuple of two finite numbers, got {value!r}"
                )
        for name in ("flip_probability", "brightness", "contrast", "saturation", "hue"):
            value = getattr(self, name)
            if not _is_finite_number(value):
                raise ImageAugmentationError(
                    f"ImageAugmentation.{name} must be a finite number, got {value!r}"
                )

        low_scale, high_scale = self.crop_scale
        low_ratio, high_ratio = self.crop_ratio
        checks = {
            "crop_scale": (0.0 < low_scale <= high_scale <= 1.0, "(low, high) with 0 < low <= high <= 1"),
            "crop_ratio": (0.0 < low_ratio <= high_ratio, "(low, high) with 0 < low <= high"),
            "flip_probability": (0.0 <= self.flip_probability <= 1.0, "in [0, 1]"),
            "brightness": (0.0 <= self.brightness < 1.0, "in [0, 1)"),
            "contrast": (0.0 <= self.contrast < 1.0, "in [0, 1)"),
            "saturation": (0.0 <= self.saturation < 1.0, "in [0, 1)"),
            "hue": (0.0 <= self.hue <= 0.5, "in [0, 0.5]"),
        }
        for name, (valid, expected) in checks.items():
            if not valid:
                raise ImageAugmentationError(
                    f"ImageAugmentation.{name} must be {expected}, got {getattr(self, name)!r}"
                )


def _is_finite_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def resize_image(image: Image.Image, spec: ImageBackboneSpec) -> torch.Tensor:
    """Resize an RGB image as the encoder does before its central crop, into (3, H, W) uint8.

    The shorter side becomes `spec.resize_size`, after a longer side beyond the encoder's aspect
    ratio limit is cropped, so `center_view` of the result equals the encoder's network input.
    """
    if image.mode != "RGB":
        raise ValueError(f"image has mode {image.mode}, expected RGB. Convert it first, as decode_image does")
    bounded = crop_to_aspect_ratio(image)
    resized = TF.resize(bounded, [spec.resize_size], interpolation=TF.InterpolationMode(spec.interpolation))
    return TF.pil_to_tensor(resized)  # (3, H, W) uint8


def load_resized_images(
    keys: Sequence[str],
    paths: Sequence[Path | None],
    spec: ImageBackboneSpec,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
) -> dict[str, torch.Tensor]:
    """Decode and resize each image file once, and return a map of key to (3, H, W) uint8.

    Each image is resized as `resize_image` does.

    Keys whose path is None are left out. So are keys whose file cannot be read or decoded, and
    each of those is logged with its key and the error.
    """
    if len(keys) != len(paths):
        raise ValueError(f"keys and paths must have the same length, got {len(keys)} and {len(paths)}")

    def load(key: str, path: Path) -> torch.Tensor | None:
        try:
            data = path.read_bytes()
        except OSError as error:
            logger.warning("product %s: failed to read image file %s: %s", key, path, error)
            return None
        try:
            return resize_image(decode_image(data, max_pixels=max_pixels), spec)
        except ImageDecodeError as error:
            logger.warning("product %s: failed to decode image file %s: %s", key, path, error)
            return None

    present = [(key, path) for key, path in zip(keys, paths, strict=True) if path is not None]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resize") as pool:
        loaded = list(pool.map(lambda pair: load(*pair), present))
    images = {key: pixels for (key, _), pixels in zip(present, loaded, strict=True) if pixels is not None}
    logger.info(
        "resized %d of %d images to a %d-pixel shorter side (%d without a file, %d failed)",
        len(images),
        len(keys),
        spec.resize_size,
        len(keys) - len(present),
        len(present) - len(images),
    )
    return images


def center_view(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Return the central `size` x `size` crop of a resized image (3, H, W) uint8, as the encoder crops it."""
    return TF.center_crop(pixels, [size, size])


def view_generator(seed: int, key: str, view: int) -> np.random.Generator:
    """Return the generator of image `key`'s augmented view number `view`, the same on every call."""
    # CRC-32 is stable across processes, unlike hash(). Two keys with the same checksum only share draws.
    return np.random.default_rng([seed, view, zlib.crc32(key.encode("utf-8"))])


def augmented_view(
    pixels: torch.Tensor,
    size: int,
    augmentation: ImageAugmentation,
    rng: np.random.Generator,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Crop, resize, flip and colour-jitter a resized image (3, H, W) uint8 into (3, size, size) uint8."""
    top, left, height, width = _crop_box(pixels.shape[1], pixels.shape[2], augmentation, rng)
    view = TF.resized_crop(
        pixels,
        top,
        left,
        height,
        width,
        [size, size],
        interpolation=TF.InterpolationMode(interpolation),
        antialias=True,
    )  # (3, size, size)
    if rng.random() < augmentation.flip_probability:
        view = TF.hflip(view)
    return _jitter_colours(view, augmentation, rng)


def _crop_box(
    image_height: int, image_width: int, augmentation: ImageAugmentation, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Draw (top, left, height, width) of a random crop, as torchvision's RandomResizedCrop draws it."""
    area = image_height * image_width
    log_low, log_high = math.log(augmentation.crop_ratio[0]), math.log(augmentation.crop_ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(*augmentation.crop_scale)
        ratio = math.exp(rng.uniform(log_low, log_high))
        width = round(math.sqrt(target_area * ratio))
        height = round(math.sqrt(target_area / ratio))
        if 0 < width <= image_width and 0 < height <= image_height:
            top = int(rng.integers(0, image_height - height + 1))
            left = int(rng.integers(0, image_width - width + 1))
            return top, left, height, width

    # No draw fitted: take the largest central crop whose ratio is within the range.
    ratio = image_width / image_height
    if ratio < augmentation.crop_ratio[0]:
        width, height = image_width, round(image_width / augmentation.crop_ratio[0])
    elif ratio > augmentation.crop_ratio[1]:
        width, height = round(image_height * augmentation.crop_ratio[1]), image_height
    else:
        width, height = image_width, image_height
    return (image_height - height) // 2, (image_width - width) // 2, height, width


def _jitter_colours(
    view: torch.Tensor, augmentation: ImageAugmentation, rng: np.random.Generator
) -> torch.Tensor:
    """Apply brightness, contrast, saturation and hue changes to (3, H, W) uint8 in a random order."""
    adjustments: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if augmentation.brightness > 0.0:
        factor = rng.uniform(1.0 - augmentation.brightness, 1.0 + augmentation.brightness)
        adjustments.append(partial(TF.adjust_brightness, brightness_factor=factor))
    if augmentation.contrast > 0.0:
        factor = rng.uniform(1.0 - augmentation.contrast, 1.0 + augmentation.contrast)
        adjustments.append(partial(TF.adjust_contrast, contrast_factor=factor))
    if augmentation.saturation > 0.0:
        factor = rng.uniform(1.0 - augmentation.saturation, 1.0 + augmentation.saturation)
        adjustments.append(partial(TF.adjust_saturation, saturation_factor=factor))
    if augmentation.hue > 0.0:
        shift = rng.uniform(-augmentation.hue, augmentation.hue)
        adjustments.append(partial(TF.adjust_hue, hue_factor=shift))
    for position in rng.permutation(len(adjustments)):
        view = adjustments[position](view)
    return view
