"""Bad inputs to each of the three services, as tables of cases over real gRPC channels.

The image and text encoders run with their real models on CPU. The fusion predictor runs with a
checkpoint trained for a few steps, both encoders and a real Redis online store. The store uses its
own Feast project, whose keys are deleted afterwards. Every server's maximum message size is set
through its environment variable to MAX_MESSAGE_BYTES. Each case checks the status code and the
message, then makes a valid call on the same server, which must succeed.
"""

from __future__ import annotations

import io
import math
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import redis
from PIL import Image

from encoders.image import ImageEncoder, load_image_encoder
from encoders.text import TextEncoder, load_text_encoder
from features.config import FeatureStoreSettings, parse_redis_connection_string
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.online import open_reader
from features.schema import FeatureSchema
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services import image_encoder, text_encoder
from services.fusion_predictor import PredictorSettings, create_server
from services.fusion_predictor.request_parsing import MAX_WRITTEN_PRODUCT_ID_CHARS
from services.image_encoder import ImageEncoderSettings
from services.text_encoder import TextEncoderSettings
from tests.services.test_fusion_predictor_service import REDIS_ADDRESS, train_checkpoint

TIMEOUT_S = 60.0
MAX_BATCH_SIZE = 4
MAX_IMAGE_PIXELS = 1_000_000
MAX_MESSAGE_BYTES = 64 * 1024

Request = predictor_pb2.PredictQualityRequest
Batch = predictor_pb2.PredictQualityBatchRequest
Content = predictor_pb2.ProductContent

FEATURE_STORE = predictor_pb2.INPUT_SOURCE_FEATURE_STORE
COMPUTED = predictor_pb2.INPUT_SOURCE_COMPUTED
REQUEST = predictor_pb2.INPUT_SOURCE_REQUEST
MISSING = predictor_pb2.INPUT_SOURCE_MISSING

# The stored product every "still serving" check scores. train_checkpoint fits price (log scale),
# players and category.
STORED_ATTRIBUTES: dict[str, float | str] = {"price": 30.0, "players": 3.0, "category": "family"}


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims width x height RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def zeroed_pixel_data(data: bytes) -> bytes:
    """The PNG `data` with the start of its compressed pixel data overwritten by zeros."""
    corrupt = bytearray(data)
    start = corrupt.index(b"IDAT") + 4
    corrupt[start : start + 200] = bytes(200)
    return bytes(corrupt)


VALID_PNG = encode(noise(64, 48, seed=0), "PNG")
VALID_JPEG = encode(noise(64, 48, seed=1), "JPEG")
VALID_WEBP = encode(noise(64, 48, seed=2), "WEBP")
OVERSIZED_MESSAGE = b"\x00" * MAX_MESSAGE_BYTES
# About 31,000 characters and 4,800 words: far beyond the text encoder's 256 tokens, but within
# MAX_MESSAGE_BYTES. A megabyte text is cut in tests/encoders/test_text_encoder.py.
LONG_TEXT = "Durable oak dining table with four matching chairs. " * 600


def rpc_error(call: grpc.UnaryUnaryMultiCallable, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT_S)
    return raised.value


def oversized_message_text(size: int) -> str:
    # gRPC's own message names the received size and this server's limit, both in bytes.
    return f"Received message larger than max ({size} vs. {MAX_MESSAGE_BYTES})"


# Image encoder ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_model() -> ImageEncoder:
    return load_image_encoder(device="cpu")


@pytest.fixture(scope="module")
def text_model() -> TextEncoder:
    return load_text_encoder(device="cpu")


@pytest.fixture(scope="module")
def image_address(image_model: ImageEncoder) -> Iterator[str]:
    settings = ImageEncoderSettings.from_env(
        {"PQ_IMAGE_ENCODER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)},
        max_batch_size=MAX_BATCH_SIZE,
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_workers=2,
        device="cpu",
    )
    service, port = image_encoder.create_server("127.0.0.1:0", settings, image_model)
    service.start()
    yield f"127.0.0.1:{port}"
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def image_stub(image_address: str) -> Iterator[image_encoder_pb2_grpc.ImageEncoderServiceStub]:
    with grpc.insecure_channel(image_address) as channel:
        yield image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)


def assert_images_served(stub: image_encoder_pb2_grpc.ImageEncoderServiceStub) -> None:
    reply = stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=[VALID_PNG]), timeout=TIMEOUT_S)
    assert len(reply.embeddings) == 1


@pytest.mark.parametrize(
    ("images", "code", "expected"),
    [
        ([VALID_PNG, b""], "INVALID_ARGUMENT", "images[1] is invalid: image is empty (0 bytes)"),
        (
            [VALID_PNG, b"<html>not an image</html>"],
            "INVALID_ARGUMENT",
            "images[1] is invalid: bytes (25 bytes, starting 3c 68 74 6d 6c 3e 6e 6f) are not a JPEG",
        ),
        (
            [VALID_PNG, VALID_PNG[: len(VALID_PNG) // 2]],
            "INVALID_ARGUMENT",
            "images[1] is invalid: PNG image (64x48) is corrupt or truncated",
        ),
        (
            [VALID_JPEG[: len(VALID_JPEG) // 2], VALID_PNG],
            "INVALID_ARGUMENT",
            "images[0] is invalid: JPEG image (64x48) is corrupt or truncated",
        ),
        (
            [VALID_PNG, VALID_WEBP[:40]],
            "INVALID_ARGUMENT",
            "images[1] is invalid: image header cannot be parsed, the file is corrupt or truncated",
        ),
        (
            [VALID_PNG, zeroed_pixel_data(VALID_PNG)],
            "INVALID_ARGUMENT",
            "images[1] is invalid: PNG image (64x48) is corrupt or truncated",
        ),
        (
            [VALID_PNG, encode(noise(8, 8, 3), "GIF")],
            "INVALID_ARGUMENT",
            "images[1] is invalid: image is a GIF",
        ),
        (
            [VALID_PNG, encode(Image.new("RGB", (1001, 1000)), "PNG")],
            "INVALID_ARGUMENT",
            "images[1] is invalid: image is 1001x1000 = 1,001,000 pixels, more than the limit of 1,000,000",
        ),
        (
            [VALID_PNG, png_header_only(5_000, 5_000)],
            "INVALID_ARGUMENT",
            "images[1] is invalid: image is 5000x5000 = 25,000,000 pixels, more than the limit of 1,000,000",
        ),
        (
            [png_header_only(50_000, 50_000)],
            "INVALID_ARGUMENT",
            "images[0] is invalid: image is too large (",
        ),
        ([], "INVALID_ARGUMENT", "EmbedImagesRequest.images is empty"),
        (
            [VALID_PNG] * (MAX_BATCH_SIZE + 1),
            "INVALID_ARGUMENT",
            f"EmbedImagesRequest has {MAX_BATCH_SIZE + 1} images, more than the server's maximum batch size",
        ),
        ([OVERSIZED_MESSAGE], "RESOURCE_EXHAUSTED", oversized_message_text(MAX_MESSAGE_BYTES + 4)),
    ],
    ids=[
        "zero-byte",
        "not-an-image",
        "truncated-png",
        "truncated-jpeg",
        "truncated-webp",
        "corrupt-png",
        "gif",
        "over-pixel-limit",
        "bomb-header",
        "bomb-pillow-limit",
        "no-images",
        "over-batch-limit",
        "over-message-limit",
    ],
)
def test_image_encoder_bad_input(
    image_stub: image_encoder_pb2_grpc.ImageEncoderServiceStub, images: list[bytes], code: str, expected: str
) -> None:
    error = rpc_error(image_stub.EmbedImages, image_encoder_pb2.EmbedImagesRequest(images=images))

    assert error.code() == grpc.StatusCode[code]
    assert expected in error.details()
    if code == "INVALID_ARGUMENT":
        assert error.details().startswith(expected)
    assert_images_served(image_stub)


def test_image_bomb_rejected_quickly(image_stub: image_encoder_pb2_grpc.ImageEncoderServiceStub) -> None:
    # 50,000 x 50,000 RGB would take 7.5 GB decoded, so the header check must reject it long before.
    request = image_encoder_pb2.EmbedImagesRequest(images=[png_header_only(50_000, 50_000)])
    future = image_stub.EmbedImages.future(request, timeout=TIMEOUT_S)

    error = future.exception(timeout=10)

    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_images_served(image_stub)


# Text encoder -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_address(text_model: TextEncoder) -> Iterator[str]:
    settings = TextEncoderSettings.from_env(
        {"PQ_TEXT_ENCODER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)},
        max_batch_size=MAX_BATCH_SIZE,
        max_workers=2,
        device="cpu",
    )
    service, port = text_encoder.create_server("127.0.0.1:0", settings, text_model)
    service.start()
    yield f"127.0.0.1:{port}"
    service.stop(grace_s=0)


@pytest.fixture(scope="module")
def text_stub(text_address: str) -> Iterator[text_encoder_pb2_grpc.TextEncoderServiceStub]:
    with grpc.insecure_channel(text_address) as channel:
        yield text_encoder_pb2_grpc.TextEncoderServiceStub(channel)


def assert_texts_served(stub: text_encoder_pb2_grpc.TextEncoderServiceStub) -> None:
    reply = stub.EmbedTexts(text_encoder_pb2.EmbedTextsRequest(texts=["oak chair"]), timeout=TIMEOUT_S)
    assert len(reply.results) == 1


@pytest.mark.parametrize(
    ("texts", "code", "expected"),
    [
        (["oak chair", ""], "INVALID_ARGUMENT", "texts[1] is empty or only white space"),
        ([" \t\n\u00a0\u2003"], "INVALID_ARGUMENT", "texts[0] is empty or only white space"),
        ([], "INVALID_ARGUMENT", "EmbedTextsRequest.texts is empty"),
        (
            ["oak chair"] * (MAX_BATCH_SIZE + 1),
            "INVALID_ARGUMENT",
            f"EmbedTextsRequest has {MAX_BATCH_SIZE + 1} texts, more than the server's maximum batch size",
        ),
        (["x" * MAX_MESSAGE_BYTES], "RESOURCE_EXHAUSTED", oversized_message_text(MAX_MESSAGE_BYTES + 4)),
    ],
    ids=["empty-text", "white-space-text", "no-texts", "over-batch-limit", "over-message-limit"],
)
def test_text_encoder_bad_input(
    text_stub: text_encoder_pb2_grpc.TextEncoderServiceStub, texts: list[str], code: str, expected: str
) -> None:
    error = rpc_error(text_stub.EmbedTexts, text_encoder_pb2.EmbedTextsRequest(texts=texts))

    assert error.code() == grpc.StatusCode[code]
    assert expected in error.details()
    assert_texts_served(text_stub)


def test_text_over_token_limit_truncated(text_stub: text_encoder_pb2_grpc.TextEncoderServiceStub) -> None:
    request = text_encoder_pb2.EmbedTextsRequest(texts=["oak chair", LONG_TEXT])

    reply = text_stub.EmbedTexts(request, timeout=TIMEOUT_S)

    assert [result.truncated for result in reply.results] == [False, True]
    assert reply.results[1].token_count == reply.max_tokens
    assert reply.results[0].token_count < reply.max_tokens
    assert_texts_served(text_stub)


# Fusion predictor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    """The predictor under test, with what the tests need to read the store behind it."""

    stub: predictor_grpc.QualityPredictorServiceStub
    store: FeatureStoreSettings
    schema: FeatureSchema


@pytest.fixture(scope="module")
def schema(image_model: ImageEncoder, text_model: TextEncoder) -> FeatureSchema:
    return FeatureSchema(
        numeric_attributes=["price", "players"],
        categorical_attributes=["category"],
        image_model_id=image_model.model_id,
        text_model_id=text_model.model_id,
        image_embedding_dim=image_model.embedding_dim,
        text_embedding_dim=text_model.embedding_dim,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, schema: FeatureSchema) -> Iterator[FeatureStoreSettings]:
    root = tmp_path_factory.mktemp("bad_input_table_store")
    settings = FeatureStoreSettings.from_env(
        {},
        online_store="redis",
        redis_connection_string=REDIS_ADDRESS,
        feast_project=f"pq_test_bad_input_table_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=root,
        feature_data_dir=root / "data",
    )
    write_offline_features(
        settings.feature_data_dir,
        schema,
        ["normal"],
        pd.DataFrame([STORED_ATTRIBUTES]),
        np.full((1, schema.image_embedding_dim), np.nan, dtype=np.float32),
        np.full((1, schema.text_embedding_dim), np.nan, dtype=np.float32),
        datetime.now(UTC) - timedelta(days=1),
    )
    apply_and_materialize(settings, schema)
    yield settings

    address = parse_redis_connection_string(REDIS_ADDRESS)
    client = redis.Redis(host=address.host, port=address.port, **address.params)
    for key in client.scan_iter(match=b"*" + settings.feast_project.encode()):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def predictor(
    tmp_path_factory: pytest.TempPathFactory,
    schema: FeatureSchema,
    store: FeatureStoreSettings,
    image_address: str,
    text_address: str,
) -> Iterator[Predictor]:
    checkpoint: Path = train_checkpoint(
        tmp_path_factory.mktemp("bad_input_table_model") / "checkpoint", schema
    )
    settings = PredictorSettings.from_env(
        {"PQ_PREDICTOR_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)},
        model_path=checkpoint,
        image_encoder_address=image_address,
        text_encoder_address=text_address,
        encoder_timeout_s=TIMEOUT_S,
        max_batch_size=MAX_BATCH_SIZE,
        max_workers=2,
        device="cpu",
    )
    service, port = create_server("127.0.0.1:0", settings, store_settings=store)
    service.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Predictor(predictor_grpc.QualityPredictorServiceStub(channel), store, schema)
    service.stop(grace_s=0)


def content(title: str | None = None, image: bytes = b"", **attributes: float | str) -> Content:
    message = Content(image=image)
    if title is not None:
        message.title = title
    for name, value in attributes.items():
        if isinstance(value, str):
            message.attributes[name].string_value = value
        else:
            message.attributes[name].number_value = value
    return message


def predict(
    stub: predictor_grpc.QualityPredictorServiceStub, request: Request
) -> predictor_pb2.PredictQualityResponse:
    return stub.PredictQuality(request, timeout=TIMEOUT_S)


def sources(response: predictor_pb2.PredictQualityResponse) -> list[int]:
    return [contribution.source for contribution in response.contributions]


def assert_predictor_serving(stub: predictor_grpc.QualityPredictorServiceStub) -> None:
    response = predict(stub, Request(product_id="normal"))
    assert sources(response) == [MISSING, MISSING, FEATURE_STORE]
    assert math.isfinite(response.quality)


def batch_with_bad_third(bad: Request) -> Batch:
    return Batch(requests=[Request(product_id="normal"), Request(content=content(players=2.0)), bad])


@pytest.mark.parametrize(
    ("request_message", "code", "expected"),
    [
        (
            Request(content=content(price=math.nan)),
            "INVALID_ARGUMENT",
            "request.content.attributes['price'] is nan, but numbers must be finite",
        ),
        (
            Request(content=content(price=math.inf)),
            "INVALID_ARGUMENT",
            "request.content.attributes['price'] is inf, but numbers must be finite",
        ),
        (
            Request(product_id="normal", content=content(players=-math.inf)),
            "INVALID_ARGUMENT",
            "request.content.attributes['players'] is -inf, but numbers must be finite",
        ),
        (
            Request(content=content(price=-5.0)),
            "INVALID_ARGUMENT",
            (
                "request.content.attributes['price'] is -5, but this attribute is read on a log scale "
                "and must be 0 or more"
            ),
        ),
        (
            Request(content=content(title="")),
            "INVALID_ARGUMENT",
            "request.content.title is empty or only white space",
        ),
        (
            Request(content=content(title=" \n\t")),
            "INVALID_ARGUMENT",
            "request.content.title is empty or only white space",
        ),
        (
            Request(content=content(title="\u200b\u200d\ufeff")),
            "INVALID_ARGUMENT",
            "request.content.title '\\u200b\\u200d\\ufeff' contains only white space and control, zero-width",
        ),
        (
            Request(content=content(title="\x00\x07 \x1b")),
            "INVALID_ARGUMENT",
            "request.content.title '\\x00\\x07 \\x1b' contains only white space and control",
        ),
        (
            Request(content=Content(description="A sturdy table")),
            "INVALID_ARGUMENT",
            "request.content.description is given without content.title",
        ),
        (
            Request(content=Content(image=b"")),
            "INVALID_ARGUMENT",
            "request is empty",
        ),
        (
            Request(content=content(title="Oak table", image=b"\x89PNG\r\n\x1a\n")),
            "INVALID_ARGUMENT",
            "request.content.image was rejected by the image encoder: images[0] is invalid: ",
        ),
        (
            Request(content=content(weight_kg=2.0)),
            "INVALID_ARGUMENT",
            "request.content.attributes has unknown attribute names 'weight_kg'",
        ),
        (
            Request(product_id="p" * (MAX_WRITTEN_PRODUCT_ID_CHARS + 1), content=content(players=2.0)),
            "INVALID_ARGUMENT",
            f"request.product_id {'p' * 80!r}... (1,025 characters) is longer than 1,024 characters",
        ),
        (
            Request(product_id="new\x00id", content=content(players=2.0)),
            "INVALID_ARGUMENT",
            "request.product_id 'new\\x00id' contains the control or format character U+0000 at position 3",
        ),
        (
            Request(product_id="new\u200bid", content=content(title="Oak table")),
            "INVALID_ARGUMENT",
            "request.product_id 'new\\u200bid' contains the control or format character U+200B at position 3",
        ),
        (
            Request(product_id="no-such-product"),
            "NOT_FOUND",
            "request.product_id 'no-such-product' has no features in the online store",
        ),
        (
            Request(product_id="x" * MAX_MESSAGE_BYTES),
            "RESOURCE_EXHAUSTED",
            oversized_message_text(MAX_MESSAGE_BYTES + 4),
        ),
    ],
    ids=[
        "nan-price",
        "inf-price",
        "minus-inf-players",
        "negative-log-scale-price",
        "empty-title",
        "white-space-title",
        "zero-width-title",
        "control-character-title",
        "description-without-title",
        "zero-byte-image-only",
        "corrupt-image",
        "unknown-attribute",
        "overlong-id-with-content",
        "control-character-id-with-content",
        "zero-width-id-with-content",
        "unknown-id",
        "over-message-limit",
    ],
)
def test_predictor_bad_input(
    predictor: Predictor, request_message: Request, code: str, expected: str
) -> None:
    error = rpc_error(predictor.stub.PredictQuality, request_message)

    assert error.code() == grpc.StatusCode[code]
    assert expected in error.details()
    if code != "RESOURCE_EXHAUSTED":
        assert error.details().startswith(expected)
    assert_predictor_serving(predictor.stub)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (
            Batch(requests=[Request(product_id="normal")] * (MAX_BATCH_SIZE + 1)),
            (
                f"requests contains {MAX_BATCH_SIZE + 1} requests, more than this server's maximum "
                f"batch size {MAX_BATCH_SIZE}"
            ),
        ),
        (Batch(), "requests is empty"),
        (
            batch_with_bad_third(Request(content=content(price=-1.0))),
            "requests[2].content.attributes['price'] is -1",
        ),
        (
            batch_with_bad_third(Request(content=content(title="\u200b"))),
            "requests[2].content.title '\\u200b'",
        ),
        (
            batch_with_bad_third(Request(product_id="a\nb", content=content(players=1.0))),
            "requests[2].product_id 'a\\nb' contains the control",
        ),
    ],
    ids=[
        "over-batch-limit",
        "no-requests",
        "negative-price-at-2",
        "zero-width-title-at-2",
        "control-id-at-2",
    ],
)
def test_predictor_bad_batch(predictor: Predictor, batch: Batch, expected: str) -> None:
    error = rpc_error(predictor.stub.PredictQualityBatch, batch)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(expected)
    assert_predictor_serving(predictor.stub)


def test_unknown_category_unknown_bucket(predictor: Predictor) -> None:
    # Unseen values share the encoder's unknown bucket with missing ones. With the price given, the
    # attributes are present either way, so the two predictions are equal.
    unseen = predict(predictor.stub, Request(content=content(price=30.0, category="never-seen-category")))
    without = predict(predictor.stub, Request(content=content(price=30.0)))
    known = predict(predictor.stub, Request(content=content(price=30.0, category="family")))

    assert sources(unseen) == [MISSING, MISSING, REQUEST]
    assert unseen.quality == pytest.approx(without.quality, abs=1e-9)
    assert unseen.quality != pytest.approx(known.quality, abs=1e-9)
    assert_predictor_serving(predictor.stub)


def test_missing_attributes_from_store_or_missing(predictor: Predictor) -> None:
    # Attributes left out of the request come from the store when the id is stored, else are missing.
    partial = predict(predictor.stub, Request(product_id="normal", content=content(players=5.0)))
    spelled_out = predict(
        predictor.stub, Request(content=content(price=30.0, players=5.0, category="family"))
    )
    alone = predict(predictor.stub, Request(content=content(players=5.0)))

    assert sources(partial) == [MISSING, MISSING, REQUEST]
    assert partial.quality == pytest.approx(spelled_out.quality, abs=1e-9)
    assert sources(alone) == [MISSING, MISSING, REQUEST]
    assert alone.quality != pytest.approx(partial.quality, abs=1e-9)
    assert_predictor_serving(predictor.stub)


def test_blank_category_read_as_missing(predictor: Predictor) -> None:
    # A blank category is not an error: it marks the stored category as unknown for this call.
    replaced = predict(predictor.stub, Request(product_id="normal", content=content(category="")))
    spelled_out = predict(predictor.stub, Request(content=content(price=30.0, players=3.0)))
    only_blank = predict(predictor.stub, Request(content=content(category=" \t")))

    assert sources(replaced) == [MISSING, MISSING, REQUEST]
    assert replaced.quality == pytest.approx(spelled_out.quality, abs=1e-9)
    assert sources(only_blank) == [MISSING, MISSING, MISSING]
    assert predictor_pb2.MODALITY_ATTRIBUTES in only_blank.missing_modalities
    assert_predictor_serving(predictor.stub)


def test_zero_byte_image_not_given(predictor: Predictor) -> None:
    # In proto3 an empty bytes field means "not set", so the image is missing, not invalid.
    response = predict(predictor.stub, Request(content=content(image=b"", players=2.0)))

    assert sources(response) == [MISSING, MISSING, REQUEST]
    assert predictor_pb2.MODALITY_IMAGE in response.missing_modalities
    assert_predictor_serving(predictor.stub)


def test_long_description_scored(predictor: Predictor) -> None:
    # A text far beyond the encoder's 256 tokens is truncated there and still scored. The predictor's
    # response has no field that reports the truncation.
    request = Request(content=Content(title="Oak table", description=LONG_TEXT))

    response = predict(predictor.stub, request)

    assert sources(response) == [MISSING, COMPUTED, MISSING]
    assert math.isfinite(response.quality)
    assert_predictor_serving(predictor.stub)


def test_duplicate_ids_in_batch(predictor: Predictor) -> None:
    stored = Request(product_id="normal")
    changed = Request(product_id="normal", content=content(players=5.0))

    responses = predictor.stub.PredictQualityBatch(
        Batch(requests=[stored, changed, stored]), timeout=TIMEOUT_S
    )
    single_stored = predict(predictor.stub, stored)
    single_changed = predict(predictor.stub, changed)

    qualities = [response.quality for response in responses.responses]
    assert [response.product_id for response in responses.responses] == ["normal"] * 3
    assert qualities[0] == pytest.approx(single_stored.quality, abs=1e-9)
    assert qualities[2] == pytest.approx(single_stored.quality, abs=1e-9)
    assert qualities[1] == pytest.approx(single_changed.quality, abs=1e-9)
    assert_predictor_serving(predictor.stub)


def test_duplicate_ids_last_written_back(predictor: Predictor) -> None:
    # Both requests are scored from their own titles, and the store keeps the text of the last one.
    product_id = f"duplicate-{uuid.uuid4().hex[:8]}"
    first = Request(product_id=product_id, content=content(title="Oak dining table"))
    last = Request(product_id=product_id, content=content(title="Plastic garden chair"))

    batch = predictor.stub.PredictQualityBatch(Batch(requests=[first, last]), timeout=TIMEOUT_S)
    by_id = predict(predictor.stub, Request(product_id=product_id))

    first_reply, last_reply = batch.responses
    assert sources(first_reply) == [MISSING, COMPUTED, MISSING]
    assert sources(last_reply) == [MISSING, COMPUTED, MISSING]
    assert first_reply.quality != pytest.approx(last_reply.quality, abs=1e-9)
    assert sources(by_id) == [MISSING, FEATURE_STORE, MISSING]
    assert by_id.quality == pytest.approx(last_reply.quality, abs=1e-6)


def test_rejected_id_not_written_back(predictor: Predictor) -> None:
    product_id = "rejected\x00id"

    error = rpc_error(
        predictor.stub.PredictQuality, Request(product_id=product_id, content=content(title="Oak table"))
    )
    stored = open_reader(predictor.store, predictor.schema).read([product_id])[0]

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not stored.found
    assert_predictor_serving(predictor.stub)
