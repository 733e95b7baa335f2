"""Shrink decoded images in the gRPC handler threads, so the batch's forward pass starts sooner."""

from __future__ import annotations

import torchvision.transforms.functional as TF
from PIL import Image

from encoders.image.backbones import ImageBackboneSpec
from encoders.image.encoder import crop_to_aspect_ratio


def shrink_for_encoder(image: Image.Image, spec: ImageBackboneSpec) -> Image.Image:
    """Apply the aspect-ratio crop and the shorter-side resize of `ImageEncoder.embed` ahead of time.

    These are the costly steps of the encoder's preprocessing on a large photo. `embed` repeats
    them, but on an image that they already produced both return it unchanged: the crop is within
    the ratio, and torchvision 0.29's resize returns an image that already has the output size. So
    `embed([shrink_for_encoder(image, spec)])` equals `embed([image])` exactly, which a test checks.
    """
    # NOTE: this copies two steps of ImageEncoder's private preprocessing. An encoder method that
    # embeds pixels already cropped to (N, 3, input_size, input_size) uint8 would replace it.
    bounded = crop_to_aspect_ratio(image)
    return TF.resize(bounded, [spec.resize_size], interpolation=TF.InterpolationMode(spec.interpolation))
