"""Hostile inputs sent to the image and text encoder services over real gRPC channels.

Both services run on free ports with their real models on CPU. Every case checks the status code,
the message and that the service still embeds a valid input afterwards.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from encoders.image import ImageEncoder, load_image_encoder
from encoders.image.encoder import MAX_ASPECT_RATIO, crop_to_aspect_ratio
from encoders.text import TextEncoder, load_text_encoder
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from services import image_encoder, text_encoder
from services.common.embedding_codec import from_message
from services.image_encoder import ImageEncoderSettings
from services.text_encoder import TextEncoderSettings

TIMEOUT_S = 60.0


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose pixels differ along both axes, so a crop at the wrong place changes it."""
    x = np.arange(width)[None, :] % 256  # (1, W)
    y = np.arange(height)[:, None] % 256  # (H, 1)
    pixels = np.stack(np.broadcast_arrays(x, y, (x + y) % 256), axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels, mode="RGB")


VALID_IMAGE = png(gradient(64, 48))


@pytest.fixture(scope="module")
def image_model() -> ImageEncoder:
    return load_image_encoder(device="cpu")


@pytest.fixture(scope="module")
def image_channel(image_model: ImageEncoder) -> Iterator[grpc.Channel]:
    settings = ImageEncoderSettings.from_env({}, max_workers=2, device="cpu")
    service, port = image_encoder.create_server("127.0.0.1:0", settings, image_model)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def text_channel() -> Iterator[grpc.Channel]:
    model: TextEncoder = load_text_encoder(device="cpu")
    service, port = text_encoder.create_server(
        "127.0.0.1:0", TextEncoderSettings(max_workers=2, device="cpu"), model
    )
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def image_stub(image_channel: grpc.Channel) -> image_encoder_pb2_grpc.ImageEncoderServiceStub:
    return image_encoder_pb2_grpc.ImageEncoderServiceStub(image_channel)


@pytest.fixture(scope="module")
def text_stub(text_channel: grpc.Channel) -> text_encoder_pb2_grpc.TextEncoderServiceStub:
    return text_encoder_pb2_grpc.TextEncoderServiceStub(text_channel)


def embed_images(stub: image_encoder_pb2_grpc.ImageEncoderServiceStub, images: list[bytes]) -> np.ndarray:
    reply = stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=images), timeout=TIMEOUT_S)
    return np.stack([from_message(embedding) for embedding in reply.embeddings])  # (N, D)


def assert_images_served(stub: image_encoder_pb2_grpc.ImageEncoderServiceStub) -> None:
    assert embed_images(stub, [VALID_IMAGE]).shape[0] == 1


def assert_texts_served(stub: text_encoder_pb2_grpc.TextEncoderServiceStub) -> None:
    reply = stub.EmbedTexts(text_encoder_pb2.EmbedTextsRequest(texts=["oak chair"]), timeout=TIMEOUT_S)
    assert len(reply.results) == 1


def call_raw(channel: grpc.Channel, method: str, payload: bytes) -> grpc.RpcError:
    """Send `payload` as the serialized request of `method`, bypassing the client's own checks."""
    send = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as raised:
        send(payload, timeout=TIMEOUT_S)
    return raised.value


def test_crop_keeps_ratio_and_centre() -> None:
    wide = gradient(8000, 3)
    tall = gradient(2, 1000)

    cropped_wide = crop_to_aspect_ratio(wide)
    cropped_tall = crop_to_aspect_ratio(tall)

    assert cropped_wide.size == (3 * MAX_ASPECT_RATIO, 3)
    assert cropped_tall.size == (2, 2 * MAX_ASPECT_RATIO)
    left = (8000 - 3 * MAX_ASPECT_RATIO) // 2
    assert np.array_equal(np.asarray(cropped_wide), np.asarray(wide)[:, left : left + 3 * MAX_ASPECT_RATIO])
    top = (1000 - 2 * MAX_ASPECT_RATIO) // 2
    assert np.array_equal(np.asarray(cropped_tall), np.asarray(tall)[top : top + 2 * MAX_ASPECT_RATIO, :])


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (1600, 100), (100, 1600), (1, 1)])
def test_preprocess_unchanged_within_ratio(image_model: ImageEncoder, size: tuple[int, int]) -> None:
    # The preprocessing as it was before the aspect-ratio crop, so stored embeddings stay valid.
    image = gradient(*size)
    spec = image_model.spec
    interpolation = TF.InterpolationMode(spec.interpolation)
    resized = TF.resize(image, [spec.resize_size], interpolation=interpolation)
    pixels = TF.pil_to_tensor(TF.center_crop(resized, [spec.input_size, spec.input_size]))  # (3, H, W)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    expected = (pixels.to(torch.float32) / 255.0 - mean) / std  # (3, H, W)

    actual = image_model.preprocess([image])[0]  # (3, H, W)

    assert crop_to_aspect_ratio(image) is image
    assert torch.equal(actual, expected)


def test_resize_input_within_ratio(image_model: ImageEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 40,000,000 x 1 image is within the default pixel limit (a 39 KB PNG), and scaling its
    # shorter side to 256 would allocate about 30 GB. The wrapper checks what reaches the real
    # resize and fails before that allocation when the crop is missing.
    real_resize = TF.resize
    resized_sizes: list[tuple[int, int]] = []

    def checked_resize(image: Image.Image, size: list[int], **options: object) -> Image.Image:
        resized_sizes.append(image.size)
        assert max(image.size) <= MAX_ASPECT_RATIO * min(image.size), f"resize received {image.size}"
        return real_resize(image, size, **options)

    monkeypatch.setattr(TF, "resize", checked_resize)

    pixels = image_model.preprocess([Image.new("RGB", (40_000_000, 1)), Image.new("RGB", (1, 40_000_000))])

    assert resized_sizes == [(MAX_ASPECT_RATIO, 1), (1, MAX_ASPECT_RATIO)]
    assert pixels.shape == (2, 3, image_model.spec.input_size, image_model.spec.input_size)


@pytest.mark.parametrize("size", [(8000, 1), (1, 8000), (5000, 3)])
def test_extreme_aspect_ratio_embedded_as_central_crop(
    image_stub: image_encoder_pb2_grpc.ImageEncoderServiceStub, size: tuple[int, int]
) -> None:
    image = gradient(*size)
    central = crop_to_aspect_ratio(image)

    vectors = embed_images(image_stub, [png(image), png(central)])

    assert max(central.size) == MAX_ASPECT_RATIO * min(central.size)
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=0, atol=1e-6)
    assert_images_served(image_stub)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (b"\x00\x00\x01\x00" + bytes(60), "image is an ICO file"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image is an SVG file"),
        (b"GIF89a" + bytes(20), "image is a GIF file"),
    ],
)
def test_rejected_format_named_with_article(
    image_stub: image_encoder_pb2_grpc.ImageEncoderServiceStub, image: bytes, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed_images(image_stub, [image])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"images[0] is invalid: {expected}; only JPEG, PNG and WebP are accepted"
    assert_images_served(image_stub)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff", "Wire format was corrupt"),
        (b"\x0a\x02\x89P\x12", "Wire format was corrupt"),
    ],
)
def test_image_request_not_parsable(
    image_channel: grpc.Channel,
    image_stub: image_encoder_pb2_grpc.ImageEncoderServiceStub,
    payload: bytes,
    reason: str,
) -> None:
    error = call_raw(image_channel, "/pq.v1.ImageEncoderService/EmbedImages", payload)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request cannot be parsed: ")
    assert "pq.v1.EmbedImagesRequest" in error.details()
    assert reason in error.details()
    assert_images_served(image_stub)


@pytest.mark.parametrize(
    "text_bytes",
    [b"\xed\xa0\x80", b"chair \xff", b"\xc0\x80"],
    ids=["utf8-encoded-surrogate", "byte-ff", "overlong-nul"],
)
def test_text_not_utf8_rejected(
    text_channel: grpc.Channel, text_stub: text_encoder_pb2_grpc.TextEncoderServiceStub, text_bytes: bytes
) -> None:
    # Field 1 (texts), wire type 2, then the length and the bytes. Protobuf clients cannot build
    # this message because they check UTF-8 when serializing.
    payload = b"\x0a" + bytes([len(text_bytes)]) + text_bytes

    error = call_raw(text_channel, "/pq.v1.TextEncoderService/EmbedTexts", payload)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pq.v1.EmbedTextsRequest" in error.details()
    assert "String field had bad UTF-8" in error.details()
    assert "every string field valid UTF-8" in error.details()
    assert_texts_served(text_stub)
