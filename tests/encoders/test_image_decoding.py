"""Tests of encoders.image.decoding on images built in memory with Pillow."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from encoders.image.decoding import ALLOWED_FORMATS, ImageDecodeError, decode_image

MAX_PIXELS = 40_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noisy_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels, so compressed files are large and a truncated one is missing real data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit RGB pixels, followed by a tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("fmt", "options", "tolerance"), [
    ("PNG", {}, 0),
    ("JPEG", {"quality": 95}, 6),
    ("WEBP", {"lossless": True}, 0),
    ("WEBP", {"quality": 90}, 12),
])
def test_decode_allowed_formats(fmt: str, options: dict[str, object], tolerance: int) -> None:
    source = Image.new("RGB", (40, 30), (200, 30, 60))

    image = decode_image(encode(source, fmt, **options), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.size == (40, 30)
    pixels = np.asarray(image).astype(int)  # (H, W, 3)
    assert np.abs(pixels - np.array([200, 30, 60])).max() <= tolerance


def test_allowed_formats_constant() -> None:
    assert ALLOWED_FORMATS == {"JPEG", "PNG", "WEBP"}


def test_decode_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", max_pixels=MAX_PIXELS)


def test_decode_text_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG or WebP image") as raised:
        decode_image(b"this is plain text, not an image", max_pixels=MAX_PIXELS)
    assert "74 68 69 73" in str(raised.value)  # the leading bytes in hex, for debugging


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_decode_other_format(fmt: str, name: str) -> None:
    data = encode(Image.new("RGB", (8, 8), (1, 2, 3)), fmt)

    with pytest.raises(ImageDecodeError, match=f"is a {name} file; only JPEG, PNG and WebP are accepted"):
        decode_image(data, max_pixels=MAX_PIXELS)


def test_decode_corrupt_png() -> None:
    data = bytearray(encode(noisy_rgb(64, 64), "PNG"))
    data[60:400] = bytes(340)  # zero out the start of the compressed pixel data

    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(bytes(data), max_pixels=MAX_PIXELS)


def test_decode_garbage_after_signature() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decode_truncated(fmt: str) -> None:
    data = encode(noisy_rgb(128, 128), fmt)

    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_decode_over_pixel_limit() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")

    with pytest.raises(ImageDecodeError, match="100x100 = 10,000 pixels, more than the limit of 9,999"):
        decode_image(data, max_pixels=9_999)


def test_decode_at_pixel_limit() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")

    assert decode_image(data, max_pixels=10_000).size == (100, 100)


def test_decode_bomb_rejected_from_header() -> None:
    # 50,000 x 50,000 RGB would need 7.5 GB; the header check must reject it without decoding.
    data = png_header_only(50_000, 50_000)
    started = time.perf_counter()

    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(data, max_pixels=MAX_PIXELS)
    assert time.perf_counter() - started < 1.0


def test_decode_pillow_bomb_error() -> None:
    # Above twice Image.MAX_IMAGE_PIXELS Pillow raises DecompressionBombError while opening.
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    data = png_header_only(side, side)

    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=10**12)


def test_decode_pillow_bomb_warning() -> None:
    # Between Image.MAX_IMAGE_PIXELS and twice that Pillow only warns; the warning must become an error.
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    data = png_header_only(side, side)
    filters_before = list(warnings.filters)

    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=10**12)
    assert warnings.filters == filters_before


def test_decode_invalid_limit() -> None:
    with pytest.raises(ValueError, match="max_pixels must be positive"):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"), max_pixels=0)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_decode_rgba_on_white(fmt: str) -> None:
    source = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    source.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue
    source.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black

    image = decode_image(encode(source, fmt, lossless=True), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((2, 0)) == (255, 0, 0)
    half = image.getpixel((1, 0))
    assert all(126 <= channel <= 128 for channel in half)


def test_decode_palette_transparency() -> None:
    source = Image.new("P", (3, 1))
    source.putpalette([0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    source.putpixel((0, 0), 0)
    source.putpixel((1, 0), 1)
    source.putpixel((2, 0), 1)

    image = decode_image(encode(source, "PNG", transparency=0), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (10, 20, 30)


def test_decode_palette_opaque() -> None:
    source = Image.new("RGB", (8, 8), (12, 200, 99)).convert("P", palette=Image.Palette.ADAPTIVE)

    image = decode_image(encode(source, "PNG"), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.getpixel((3, 3)) == (12, 200, 99)


def test_decode_grey_alpha() -> None:
    source = Image.new("LA", (2, 1), (40, 255))
    source.putpixel((1, 0), (40, 0))

    image = decode_image(encode(source, "PNG"), max_pixels=MAX_PIXELS)

    assert image.getpixel((0, 0)) == (40, 40, 40)
    assert image.getpixel((1, 0)) == (255, 255, 255)


def test_decode_grey_jpeg() -> None:
    image = decode_image(encode(Image.new("L", (16, 16), 90), "JPEG"), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert all(abs(channel - 90) <= 2 for channel in image.getpixel((8, 8)))


def test_decode_cmyk_jpeg() -> None:
    source = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK

    image = decode_image(encode(source, "JPEG", quality=95), max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))
    assert red > 240
    assert green < 15
    assert blue < 15


def test_decode_16_bit_grey_png() -> None:
    samples = np.full((4, 4), 32_768, dtype=np.uint16)
    samples[0, 0] = 65_535
    samples[0, 1] = 0
    data = encode(Image.fromarray(samples), "PNG")

    image = decode_image(data, max_pixels=MAX_PIXELS)

    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (128, 128, 128)  # scaled, not clipped to 255
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 0, 0)


def test_decode_exif_orientation() -> None:
    source = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(source, "JPEG", exif=exif.tobytes())

    image = decode_image(data, max_pixels=MAX_PIXELS)

    assert image.size == (20, 40)


def test_decode_returns_loaded_image() -> None:
    image = decode_image(encode(noisy_rgb(32, 32), "PNG"), max_pixels=MAX_PIXELS)

    # A fully loaded image no longer needs its source file.
    assert image.getpixel((0, 0)) is not None
    assert getattr(image, "fp", None) is None
