"""Fuzz tests of the image encoder service over a real gRPC channel, with hypothesis.

The server runs on a free port with the real model on CPU. Each generated bad image is sent among
valid ones, and the reply must be INVALID_ARGUMENT naming its index with the reason decode_image
gives. A valid image must still embed to the same vector after every failed call. The examples are
derandomized, so every run sends the same payloads.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders.image import ImageDecodeError, decode_image, load_image_encoder
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc
from services import image_encoder
from services.common.embedding_codec import from_message
from services.image_encoder import ImageEncoderSettings
from tests.services.test_fuzz_image_decoding import (
    SAMPLE_FILES,
    SIDES,
    mutated_files,
    png_claiming_size,
    truncated_files,
)

MAX_BATCH_SIZE = 4
MAX_IMAGE_PIXELS = 100_000
TIMEOUT_S = 60.0
METHOD = "/pq.v1.ImageEncoderService/EmbedImages"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

# Each example makes two calls, one with a forward pass, so the counts stay small.
SERVICE_FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _valid_png() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), mode="RGB").save(buffer, "PNG")
    return buffer.getvalue()


VALID_IMAGE = _valid_png()

BAD_IMAGES = st.one_of(
    st.binary(max_size=512),
    truncated_files(),
    mutated_files(),
    st.builds(png_claiming_size, SIDES, SIDES, st.binary(max_size=64)),
    st.sampled_from([SAMPLE_FILES["gif"], b"", b"<html>not an image</html>"]),
)


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    settings_ = ImageEncoderSettings.from_env(
        {}, max_batch_size=MAX_BATCH_SIZE, max_image_pixels=MAX_IMAGE_PIXELS, max_workers=2, device="cpu"
    )
    service, port = image_encoder.create_server("127.0.0.1:0", settings_, load_image_encoder(device="cpu"))
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> image_encoder_pb2_grpc.ImageEncoderServiceStub:
    return image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)


@pytest.fixture(scope="module")
def reference_vector(stub: image_encoder_pb2_grpc.ImageEncoderServiceStub) -> np.ndarray:
    return embed_valid(stub)


def embed_valid(stub: image_encoder_pb2_grpc.ImageEncoderServiceStub) -> np.ndarray:
    reply = stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=[VALID_IMAGE]), timeout=TIMEOUT_S)
    return from_message(reply.embeddings[0])  # (D,)


def local_decode_error(data: bytes) -> ImageDecodeError | None:
    try:
        decode_image(data, max_pixels=MAX_IMAGE_PIXELS)
    except ImageDecodeError as error:
        return error
    return None


@SERVICE_FUZZ_SETTINGS
@given(bad=BAD_IMAGES, position=st.integers(min_value=0, max_value=MAX_BATCH_SIZE - 1))
def test_bad_image_rejected_and_service_serves(
    stub: image_encoder_pb2_grpc.ImageEncoderServiceStub,
    reference_vector: np.ndarray,
    bad: bytes,
    position: int,
) -> None:
    reason = local_decode_error(bad)
    assume(reason is not None)
    images = [VALID_IMAGE] * position + [bad] + [VALID_IMAGE] * (MAX_BATCH_SIZE - 1 - position)

    with pytest.raises(grpc.RpcError) as raised:
        stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=images), timeout=TIMEOUT_S)
    vector = embed_valid(stub)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"images[{position}] is invalid: {reason}"
    np.testing.assert_allclose(vector, reference_vector, rtol=0, atol=1e-5)


@settings(SERVICE_FUZZ_SETTINGS, max_examples=40)
@given(payload=st.binary(max_size=256))
def test_arbitrary_request_bytes_rejected(
    channel: grpc.Channel,
    stub: image_encoder_pb2_grpc.ImageEncoderServiceStub,
    reference_vector: np.ndarray,
    payload: bytes,
) -> None:
    # The bytes go out as the serialized request. They either fail to parse, or parse into a request
    # with no image, too many images or images that are not valid files: all INVALID_ARGUMENT.
    send = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    with pytest.raises(grpc.RpcError) as raised:
        send(payload, timeout=TIMEOUT_S)
    vector = embed_valid(stub)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    np.testing.assert_allclose(vector, reference_vector, rtol=0, atol=1e-5)
