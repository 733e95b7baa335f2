"""Safe decoding of untrusted image bytes into RGB Pillow images.

Only JPEG, PNG and WebP are parsed. The pixel count is read from the file header and checked before
any pixel data is decoded, so a small file that claims a huge canvas (a decompression bomb) is
rejected without allocating it. Nothing here opens files by path or fetches URLs: callers pass bytes.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})

# Exceptions Pillow raises on malformed input, as listed by Pillow's own fuzzing tests
# (Tests/test_fuzzers.py), plus struct.error and EOFError from header and EXIF parsing.
_PILLOW_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    struct.error,
    Image.DecompressionBombError,
)

# Leading bytes of common formats that are not accepted, used only to name the format in the error,
# with the article that the name takes.
_REJECTED_SIGNATURES = {
    b"GIF87a": "a GIF",
    b"GIF89a": "a GIF",
    b"BM": "a BMP",
    b"II*\x00": "a TIFF",
    b"MM\x00*": "a TIFF",
    b"%PDF": "a PDF",
    b"<svg": "an SVG",
    b"<?xml": "an XML",
    b"\x00\x00\x01\x00": "an ICO",
}

# White, because product photos with a transparent background are shown on white pages.
_ALPHA_BACKGROUND = (255, 255, 255)

# warnings.catch_warnings swaps the process-wide filter list, so two threads inside it at once could
# restore each other's filters. The lock keeps this module's own calls from interleaving.
_WARNINGS_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """The bytes are not a decodable JPEG, PNG or WebP image within the pixel limit.

    The message gives the reason but not the image's position in a request, which callers add.
    """


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode one encoded image into a fully loaded RGB image.

    Alpha is composited onto white, palette, grey, CMYK and 16-bit images are converted to 8-bit RGB,
    and the EXIF orientation is applied. Raises ImageDecodeError when the bytes are empty, not JPEG,
    PNG or WebP, corrupt or truncated, or when width * height exceeds `max_pixels` (or Pillow's own
    decompression-bomb limit, Image.MAX_IMAGE_PIXELS, whichever is lower).
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if len(data) == 0:
        raise ImageDecodeError("image is empty (0 bytes); send the whole encoded JPEG, PNG or WebP file")

    image = _open_header(data, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} pixels; downscale it before sending"
        )

    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return _to_rgb(upright)
    except _PILLOW_DECODE_ERRORS as error:
        raise ImageDecodeError(
            f"{image.format} image ({width}x{height}) is corrupt or truncated: {error}"
        ) from error


def _open_header(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header only, with Pillow's decompression-bomb warning raised as an error."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise ImageDecodeError(
            f"image is too large ({error}); the limit is {limit:,} pixels, downscale it before sending"
        ) from error
    except Image.UnidentifiedImageError as error:
        raise ImageDecodeError(_describe_unidentified(data)) from error
    except _PILLOW_DECODE_ERRORS as error:
        raise ImageDecodeError(
            f"image header cannot be parsed, the file is corrupt or truncated: {error}"
        ) from error


def _describe_unidentified(data: bytes) -> str:
    """Build the message for bytes that no allowed decoder accepts, naming a known other format."""
    for signature, name in _REJECTED_SIGNATURES.items():
        if data.startswith(signature):
            return f"image is {name} file; only JPEG, PNG and WebP are accepted"
    return (
        f"bytes ({len(data)} bytes, starting {data[:8].hex(' ')}) are not a JPEG, PNG or WebP image "
        "or their header is corrupt"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode Pillow produces for JPEG, PNG or WebP to 8-bit RGB."""
    if image.mode == "RGB":
        return image

    if image.mode.startswith("I"):
        # 16-bit grey PNGs open as "I;16" (or "I" in older Pillow). Pillow's own conversion to "L"
        # clips values above 255 instead of scaling them, so scale 0..65535 to 0..255 here.
        samples = np.asarray(image).astype(np.float64)  # (H, W)
        grey = np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")

    # P, L, 1, CMYK, YCbCr and the like. Pillow's JPEG decoder already undoes Adobe's inverted CMYK.
    return image.convert("RGB")
