"""Tests of services.image_encoder over a real gRPC channel, with the real model on CPU."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from encoders.image import ImageEncoder, decode_image, load_image_encoder
from pq.v1 import image_encoder_pb2
from pq.v1.image_encoder_pb2_grpc import ImageEncoderServiceStub
from services.common.embedding_codec import from_message
from services.common.settings import SettingsError
from services.image_encoder import SERVICE_NAME, ImageEncoderSettings, create_server

MAX_BATCH_SIZE = 4
MAX_IMAGE_PIXELS = 1_000_000


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


IMAGES = [
    encode(random_image(200, 150, seed=1), "PNG"),
    encode(Image.new("RGB", (120, 240), (240, 40, 10)), "JPEG"),
    encode(random_image(96, 96, seed=3), "WEBP"),
]


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return load_image_encoder(device="cpu")


@pytest.fixture(scope="module")
def channel(encoder: ImageEncoder) -> Iterator[grpc.Channel]:
    settings = ImageEncoderSettings.from_env(
        {}, max_batch_size=MAX_BATCH_SIZE, max_image_pixels=MAX_IMAGE_PIXELS, max_workers=2, device="cpu"
    )
    service, port = create_server("127.0.0.1:0", settings, encoder)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> ImageEncoderServiceStub:
    return ImageEncoderServiceStub(channel)


def embed(
    stub: ImageEncoderServiceStub, images: list[bytes]
) -> image_encoder_pb2.EmbedImagesResponse:
    return stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=images), timeout=60)


def test_embed_happy_path(stub: ImageEncoderServiceStub, encoder: ImageEncoder) -> None:
    response = embed(stub, IMAGES)

    assert response.model_id == encoder.model_id
    assert re.fullmatch(r"efficientnet_lite0\.imagenet\.224@[0-9a-f]{8}", response.model_id)
    assert response.embedding_dim == 1280
    assert len(response.embeddings) == len(IMAGES)
    for index, data in enumerate(IMAGES):
        # Request order is kept: embedding i is the embedding of image i on its own.
        expected = encoder.embed([decode_image(data, max_pixels=MAX_IMAGE_PIXELS)])[0]
        assert response.embeddings[index].dimension == 1280
        np.testing.assert_allclose(from_message(response.embeddings[index]), expected, rtol=0, atol=1e-5)


def test_embed_empty_request(stub: ImageEncoderServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, [])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images is empty" in raised.value.details()


def test_embed_over_batch_limit(stub: ImageEncoderServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, [IMAGES[0]] * (MAX_BATCH_SIZE + 1))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"has {MAX_BATCH_SIZE + 1} images" in raised.value.details()
    assert f"maximum batch size of {MAX_BATCH_SIZE}" in raised.value.details()


def test_embed_corrupt_image_index(stub: ImageEncoderServiceStub) -> None:
    corrupt = IMAGES[0][: len(IMAGES[0]) // 2]

    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, [IMAGES[0], IMAGES[1], corrupt])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details()
    assert details.startswith("images[2] is invalid:")
    assert "truncated" in details
    assert "images[0]" not in details
    assert "images[1]" not in details

    # The service still handles calls after the failed one.
    assert len(embed(stub, IMAGES[:2]).embeddings) == 2


@pytest.mark.parametrize(("bad", "reason"), [
    (b"", "empty"),
    (b"GIF89a" + bytes(20), "GIF file"),
    (b"<html>not an image</html>", "not a JPEG, PNG or WebP image"),
    (encode(Image.new("RGB", (1001, 1000)), "PNG"), "more than the limit of 1,000,000 pixels"),
])
def test_embed_invalid_image(stub: ImageEncoderServiceStub, bad: bytes, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, [IMAGES[0], bad])

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("images[1] is invalid:")
    assert reason in raised.value.details()


def test_health_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    for service in (SERVICE_NAME, ""):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_service(channel: grpc.Channel) -> None:
    services = ProtoReflectionDescriptorDatabase(channel).get_services()

    assert SERVICE_NAME == "pq.v1.ImageEncoderService"
    assert SERVICE_NAME in services
    assert "grpc.health.v1.Health" in services


def test_settings_from_env() -> None:
    settings = ImageEncoderSettings.from_env(
        {
            "PQ_IMAGE_ENCODER_MAX_BATCH_SIZE": "16",
            "PQ_IMAGE_ENCODER_BACKBONE": "resnet18",
            "PQ_IMAGE_ENCODER_WEIGHTS_PATH": "/models/resnet18.pth",
            "PQ_IMAGE_ENCODER_LOG_LEVEL": "debug",
        }
    )

    assert settings.max_batch_size == 16
    assert settings.backbone == "resnet18"
    assert str(settings.weights_path) == "/models/resnet18.pth"
    assert settings.log_level == "DEBUG"
    assert settings.max_image_pixels == 40_000_000
    assert settings.address == "127.0.0.1:50051"


def test_settings_empty_weights_path() -> None:
    settings = ImageEncoderSettings.from_env({"PQ_IMAGE_ENCODER_WEIGHTS_PATH": ""})

    assert settings.weights_path is None


@pytest.mark.parametrize(("variable", "value"), [
    ("PQ_IMAGE_ENCODER_BACKBONE", "vgg"),
    ("PQ_IMAGE_ENCODER_MAX_BATCH_SIZE", "0"),
    ("PQ_IMAGE_ENCODER_DEVICE", "gpu"),
    ("PQ_IMAGE_ENCODER_LOG_LEVEL", "chatty"),
])
def test_settings_invalid(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"{variable}={value!r}")):
        ImageEncoderSettings.from_env({variable: value})


def test_embed_concurrent_calls(stub: ImageEncoderServiceStub) -> None:
    expected = embed(stub, IMAGES)
    request = image_encoder_pb2.EmbedImagesRequest(images=IMAGES)

    pending = [stub.EmbedImages.future(request, timeout=120) for _ in range(4)]

    for future in pending:
        response = future.result()
        for index in range(len(IMAGES)):
            np.testing.assert_array_equal(
                from_message(response.embeddings[index]), from_message(expected.embeddings[index])
            )
