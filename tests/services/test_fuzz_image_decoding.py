"""Property-based tests of encoders.image.decoding.decode_image on hostile bytes, with hypothesis.

Every input must either decode into a loaded RGB image within the pixel limit or raise
ImageDecodeError, and any other exception fails the test. A spy on Pillow's `load` methods records the
size of every image whose pixels are decoded, so the tests also fail when pixel data of an image
over the limit is decoded, even if an error follows. The examples are derandomized, so every run
tries the same inputs.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, WebPImagePlugin

from encoders.image.decoding import ImageDecodeError, decode_image

# Pillow warns about the corrupt EXIF blocks of mutated JPEGs while it skips them, as expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

# Fixed example counts keep each test at a few seconds on one CPU core. No example database is
# written, so a failure found once does not change later runs.
FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Limits below, at and above the 24 x 16 = 384 pixels of the sample images, plus the service default.
PIXEL_LIMITS = st.sampled_from([1, 64, 383, 384, 10_000, 40_000_000])

SAMPLE_WIDTH, SAMPLE_HEIGHT = 24, 16


def _noise(mode: str, seed: int) -> Image.Image:
    """Random pixels in `mode`, so every byte of the compressed data matters."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(SAMPLE_HEIGHT, SAMPLE_WIDTH, 4), dtype=np.uint8)  # (H, W, 4)
    return Image.fromarray(rgba, mode="RGBA").convert(mode)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _sixteen_bit_grey() -> Image.Image:
    samples = np.random.default_rng(7).integers(0, 65_536, size=(SAMPLE_HEIGHT, SAMPLE_WIDTH))  # (H, W)
    return Image.fromarray(samples.astype(np.uint16))


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _encode(_noise("RGB", 8), "JPEG", exif=exif.tobytes())


# Real files of every accepted format and of the modes decode_image converts, plus one GIF, which
# is rejected. The mutation strategies start from these.
SAMPLE_FILES: dict[str, bytes] = {
    "png-rgb": _encode(_noise("RGB", 1), "PNG"),
    "png-rgba": _encode(_noise("RGBA", 2), "PNG"),
    "png-palette": _encode(_noise("RGB", 3).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "png-grey-16": _encode(_sixteen_bit_grey(), "PNG"),
    "png-interlaced": _encode(_noise("RGB", 4), "PNG", interlace=1),
    "jpeg-rgb": _encode(_noise("RGB", 5), "JPEG", quality=90),
    "jpeg-progressive": _encode(_noise("RGB", 6), "JPEG", progressive=True),
    "jpeg-cmyk": _encode(_noise("CMYK", 9), "JPEG"),
    "jpeg-grey": _encode(_noise("L", 10), "JPEG"),
    "jpeg-exif-rotated": _rotated_jpeg(),
    "webp-lossy": _encode(_noise("RGB", 11), "WEBP", quality=80),
    "webp-lossless-alpha": _encode(_noise("RGBA", 12), "WEBP", lossless=True),
    "gif": _encode(_noise("RGB", 13).convert("P"), "GIF"),
}


@contextmanager
def recorded_pixel_loads() -> Iterator[list[tuple[int, int]]]:
    """Record the (width, height) of every image whose pixels Pillow decodes inside the block.

    JPEG and PNG decode in ImageFile.load. WebP decodes in its own load before calling that one.
    """
    sizes: list[tuple[int, int]] = []

    def spy(original: Callable[[Any], object]) -> Callable[[Image.Image], object]:
        def load(self: Image.Image) -> object:
            sizes.append(self.size)
            return original(self)

        return load

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", spy(ImageFile.ImageFile.load))
        patch.setattr(WebPImagePlugin.WebPImageFile, "load", spy(WebPImagePlugin.WebPImageFile.load))
        yield sizes


def assert_decodes_safely(data: bytes, max_pixels: int) -> None:
    """Decode `data` and check the decode_image contract. An unexpected exception propagates."""
    with recorded_pixel_loads() as loaded_sizes:
        try:
            image = decode_image(data, max_pixels=max_pixels)
        except ImageDecodeError as error:
            assert str(error), "ImageDecodeError without a message"
            image = None

    for width, height in loaded_sizes:
        assert width * height <= max_pixels, f"decoded pixels of a {width}x{height} image, limit {max_pixels}"
    if image is None:
        return
    width, height = image.size
    assert image.mode == "RGB"
    assert 0 < width * height <= max_pixels
    assert np.asarray(image).shape == (height, width, 3)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming_size(width: int, height: int, pixel_data: bytes) -> bytes:
    """A PNG with a valid IHDR claiming width x height 8-bit RGB pixels, and `pixel_data` compressed."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(pixel_data)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """The sample baseline JPEG with the width and height of its SOF0 header replaced."""
    data = bytearray(SAMPLE_FILES["jpeg-rgb"])
    start = data.index(b"\xff\xc0")
    # SOF0: marker (2 bytes), length (2), precision (1), height (2), width (2).
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@st.composite
def truncated_files(draw: st.DrawFn) -> bytes:
    data = SAMPLE_FILES[draw(st.sampled_from(sorted(SAMPLE_FILES)))]
    return data[: draw(st.integers(min_value=0, max_value=len(data)))]


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A sample file with a few bytes XOR-ed, mostly in the first 64 bytes, where the headers are."""
    data = bytearray(SAMPLE_FILES[draw(st.sampled_from(sorted(SAMPLE_FILES)))])
    header = min(len(data), 64)
    positions = st.one_of(
        st.integers(min_value=0, max_value=header - 1), st.integers(min_value=0, max_value=len(data) - 1)
    )
    flips = draw(
        st.lists(st.tuples(positions, st.integers(min_value=1, max_value=255)), min_size=1, max_size=8)
    )
    for position, mask in flips:
        data[position] ^= mask
    return bytes(data)


# Claimed sizes from 0 (invalid) to 100,000 per side, which with the other side large is a
# 10-gigapixel decompression bomb.
SIDES = st.integers(min_value=0, max_value=100_000)


@settings(FUZZ_SETTINGS, max_examples=500)
@given(data=st.binary(max_size=2048), max_pixels=PIXEL_LIMITS)
def test_arbitrary_bytes(data: bytes, max_pixels: int) -> None:
    assert_decodes_safely(data, max_pixels)


@FUZZ_SETTINGS
@given(data=st.sampled_from(sorted(SAMPLE_FILES)).map(SAMPLE_FILES.__getitem__), max_pixels=PIXEL_LIMITS)
def test_whole_sample_files(data: bytes, max_pixels: int) -> None:
    assert_decodes_safely(data, max_pixels)


@settings(FUZZ_SETTINGS, max_examples=600)
@given(data=truncated_files(), max_pixels=PIXEL_LIMITS)
def test_truncated_files(data: bytes, max_pixels: int) -> None:
    assert_decodes_safely(data, max_pixels)


@settings(FUZZ_SETTINGS, max_examples=1000)
@given(data=mutated_files(), max_pixels=PIXEL_LIMITS)
def test_mutated_files(data: bytes, max_pixels: int) -> None:
    assert_decodes_safely(data, max_pixels)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(width=SIDES, height=SIDES, pixel_data=st.binary(max_size=512), max_pixels=PIXEL_LIMITS)
def test_png_claimed_size(width: int, height: int, pixel_data: bytes, max_pixels: int) -> None:
    assert_decodes_safely(png_claiming_size(width, height, pixel_data), max_pixels)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(
    width=st.integers(min_value=0, max_value=65_535),
    height=st.integers(min_value=0, max_value=65_535),
    max_pixels=PIXEL_LIMITS,
)
def test_jpeg_claimed_size(width: int, height: int, max_pixels: int) -> None:
    assert_decodes_safely(jpeg_claiming_size(width, height), max_pixels)


def test_samples_decoded_and_recorded() -> None:
    # The properties above are only meaningful when the unmodified samples decode and the spy records
    # their pixel decoding.
    for name, data in SAMPLE_FILES.items():
        if name == "gif":
            continue
        with recorded_pixel_loads() as loaded_sizes:
            image = decode_image(data, max_pixels=40_000_000)
        assert image.mode == "RGB", name
        assert sorted(image.size) == sorted((SAMPLE_WIDTH, SAMPLE_HEIGHT)), name
        assert (SAMPLE_WIDTH, SAMPLE_HEIGHT) in loaded_sizes, name


def test_pixel_limit_below_sample_rejected() -> None:
    for name, data in SAMPLE_FILES.items():
        with recorded_pixel_loads() as loaded_sizes, pytest.raises(ImageDecodeError):
            decode_image(data, max_pixels=SAMPLE_WIDTH * SAMPLE_HEIGHT - 1)

        assert loaded_sizes == [], name
