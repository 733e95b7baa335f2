"""Dynamic batching in the image and text encoder services, over real gRPC channels.

The tests of batching correctness use the real models on CPU. The tests of queueing, deadlines,
failures and stopping use a real ImageEncoder with a tiny model whose forward pass a test can hold,
so the queue fills in a known order.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from encoders.image import (
    DEFAULT_IMAGE_BACKBONE,
    ImageEncoder,
    decode_image,
    get_image_backbone,
    load_image_encoder,
)
from encoders.text import TextEncoder, load_text_encoder
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from services import image_encoder, text_encoder
from services.common.embedding_codec import from_message
from services.common.server import ServiceServer
from services.image_encoder import ImageEncoderServicer, ImageEncoderSettings
from services.image_encoder.preprocessing import shrink_for_encoder
from services.text_encoder import TextEncoderSettings

WAIT_S = 30.0
CLIENT_THREADS = 16
MAX_IMAGE_PIXELS = 4_000_000


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


class CountingEncoder:
    """Proxy of an encoder that records the size of every batch passed to `embed`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, items: Sequence[Any]) -> Any:
        with self._lock:
            self.batch_sizes.append(len(items))
        return self._inner.embed(items)


def run_clients(call: Callable[[random.Random], Any]) -> list[Any]:
    """Run `call` in CLIENT_THREADS threads that start together, each with its own seeded generator."""
    barrier = threading.Barrier(CLIENT_THREADS)

    def client(seed: int) -> Any:
        rng = random.Random(seed)
        barrier.wait(WAIT_S)
        return call(rng)

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        return list(pool.map(client, range(CLIENT_THREADS)))


# Batching correctness with the real models.

IMAGES = [
    png(random_image(200, 150, seed=1)),
    png(random_image(96, 96, seed=2)),
    png(random_image(1200, 900, seed=3)),
    png(random_image(3000, 60, seed=4)),
    png(Image.new("RGB", (120, 240), (240, 40, 10))),
]

TEXTS = [
    "Wireless over-ear headphones with active noise cancelling.",
    "Stainless steel water bottle, 500 ml",
    "不锈钢保温杯 500毫升",
    "Cotton T-shirt",
    "A cooperative board game for two to four players about building a railway network across Europe.",
    "This board game has very detailed rules about trading resources. " * 80,
]


@pytest.fixture(scope="module")
def image_model() -> ImageEncoder:
    return load_image_encoder(device="cpu")


@pytest.fixture(scope="module")
def text_model() -> TextEncoder:
    return load_text_encoder(device="cpu")


@pytest.fixture
def server_stop() -> Iterator[list[ServiceServer]]:
    started: list[ServiceServer] = []
    yield started
    for service in started:
        service.stop(grace_s=0)


def test_shrink_keeps_embedding_exact(image_model: ImageEncoder) -> None:
    for data in IMAGES:
        image = decode_image(data, max_pixels=MAX_IMAGE_PIXELS)

        shrunk = shrink_for_encoder(image, image_model.spec)

        assert min(shrunk.size) == image_model.spec.resize_size
        np.testing.assert_array_equal(image_model.embed([shrunk]), image_model.embed([image]))


def test_image_calls_match_unbatched(image_model: ImageEncoder, server_stop: list[ServiceServer]) -> None:
    counting = CountingEncoder(image_model)
    settings = ImageEncoderSettings.from_env({}, max_image_pixels=MAX_IMAGE_PIXELS, device="cpu")
    service, port = image_encoder.create_server("127.0.0.1:0", settings, cast(ImageEncoder, counting))
    service.start()
    server_stop.append(service)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)

        def call(rng: random.Random) -> tuple[list[bytes], image_encoder_pb2.EmbedImagesResponse]:
            request = rng.sample(IMAGES, rng.randint(1, 3))
            response = stub.EmbedImages(image_encoder_pb2.EmbedImagesRequest(images=request), timeout=WAIT_S)
            return request, response

        calls = run_clients(call)

    assert len(counting.batch_sizes) < CLIENT_THREADS
    assert sum(counting.batch_sizes) == sum(len(request) for request, _ in calls)
    for request, response in calls:
        expected = image_model.embed([decode_image(data, max_pixels=MAX_IMAGE_PIXELS) for data in request])
        received = np.stack([from_message(embedding) for embedding in response.embeddings])  # (N, D)
        assert response.model_id == image_model.model_id
        np.testing.assert_allclose(received, expected, rtol=0, atol=1e-5)


def test_text_calls_match_unbatched(text_model: TextEncoder, server_stop: list[ServiceServer]) -> None:
    counting = CountingEncoder(text_model)
    settings = TextEncoderSettings.from_env({}, device="cpu")
    service, port = text_encoder.create_server("127.0.0.1:0", settings, cast(TextEncoder, counting))
    service.start()
    server_stop.append(service)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = text_encoder_pb2_grpc.TextEncoderServiceStub(channel)

        def call(rng: random.Random) -> tuple[list[str], text_encoder_pb2.EmbedTextsResponse]:
            request = rng.sample(TEXTS, rng.randint(1, 3))
            response = stub.EmbedTexts(text_encoder_pb2.EmbedTextsRequest(texts=request), timeout=WAIT_S)
            return request, response

        calls = run_clients(call)

    assert len(counting.batch_sizes) < CLIENT_THREADS
    assert sum(counting.batch_sizes) == sum(len(request) for request, _ in calls)
    for request, response in calls:
        expected = text_model.embed(request)
        received = np.stack([from_message(result.embedding) for result in response.results])  # (N, D)
        np.testing.assert_allclose(received, expected.vectors, rtol=0, atol=1e-5)
        assert [result.token_count for result in response.results] == expected.token_counts.tolist()
        assert [result.truncated for result in response.results] == expected.truncated.tolist()


# Queueing, deadlines, failures and stopping, with a forward pass that a test can hold.


class TinyPooledModel(nn.Module):
    """Average-pools the input to 4 x 4 and projects it to the backbone's embedding size."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.projection = nn.Linear(3 * 4 * 4, embedding_dim)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(self.projection.weight.shape, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        return self.projection(self.pool(images).flatten(1))


class GatedImageEncoder(ImageEncoder):
    """An ImageEncoder with a tiny model whose `embed` waits while `gate` is clear.

    It records every batch size, and the batches whose 1-based number is in `failing_batches` raise.
    """

    def __init__(self) -> None:
        spec = get_image_backbone(DEFAULT_IMAGE_BACKBONE)
        super().__init__(
            spec, TinyPooledModel(spec.embedding_dim), device=torch.device("cpu"), weights_sha256="0" * 64
        )
        self.batch_sizes: list[int] = []
        self.failing_batches: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.batch_sizes.append(len(images))
        self.started.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never opened the gate")
        if len(self.batch_sizes) in self.failing_batches:
            raise RuntimeError("simulated forward failure")
        return super().embed(images)


@dataclass
class GatedServer:
    encoder: GatedImageEncoder
    servicer: ImageEncoderServicer
    service: ServiceServer
    stub: image_encoder_pb2_grpc.ImageEncoderServiceStub

    def send(self, image_count: int, timeout_s: float = WAIT_S) -> grpc.Future:
        request = image_encoder_pb2.EmbedImagesRequest(images=SMALL_IMAGES[:image_count])
        return self.stub.EmbedImages.future(request, timeout=timeout_s)

    def hold_first_batch(self) -> grpc.Future:
        """Send a one-image call and return once its batch waits in the forward pass."""
        self.encoder.gate.clear()
        self.encoder.started.clear()
        first = self.send(1)
        assert self.encoder.started.wait(WAIT_S)
        return first

    def wait_until_queued(self, item_count: int) -> None:
        assert self.servicer.batcher is not None
        deadline = time.monotonic() + WAIT_S
        while self.servicer.batcher.queued_items != item_count:
            assert time.monotonic() < deadline, f"{self.servicer.batcher.queued_items} items queued"
            time.sleep(0.005)


SMALL_IMAGES = [png(random_image(32, 24, seed=10 + index)) for index in range(4)]


@pytest.fixture
def start_gated_server() -> Iterator[Callable[..., GatedServer]]:
    started: list[GatedServer] = []
    channels: list[grpc.Channel] = []

    def start(**settings: Any) -> GatedServer:
        values: dict[str, Any] = {"max_batch_size": 4, "max_queued_items": 8, "device": "cpu"}
        values.update(settings)
        config = ImageEncoderSettings.from_env({}, **values)
        encoder = GatedImageEncoder()
        servicer = ImageEncoderServicer(
            encoder,
            max_batch_size=config.max_batch_size,
            max_image_pixels=config.max_image_pixels,
            batching=config.batching_config(),
            preprocess_threads=2,
        )
        service = image_encoder.build_servicer_server("127.0.0.1:0", servicer, config)
        service.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
        channels.append(channel)
        stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)
        server = GatedServer(encoder, servicer, service, stub)
        started.append(server)
        return server

    yield start
    for server in started:
        server.encoder.gate.set()
        server.service.stop(grace_s=0)
    for channel in channels:
        channel.close()


def test_queued_calls_share_forward_pass(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server(max_batch_size=8, max_queued_items=16)
    first = server.hold_first_batch()

    queued = [server.send(image_count) for image_count in (1, 2, 3, 2)]
    server.wait_until_queued(8)
    server.encoder.gate.set()

    assert len(first.result(WAIT_S).embeddings) == 1
    assert [len(call.result(WAIT_S).embeddings) for call in queued] == [1, 2, 3, 2]
    assert server.encoder.batch_sizes == [1, 8]


def test_deadline_in_queue_skips_forward(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server()
    first = server.hold_first_batch()

    expiring = server.send(2, timeout_s=0.5)
    server.wait_until_queued(2)
    error = expiring.exception(WAIT_S)
    # The ended call leaves the queue without waiting for the forward pass.
    server.wait_until_queued(0)
    server.encoder.gate.set()

    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(first.result(WAIT_S).embeddings) == 1
    assert server.encoder.batch_sizes == [1]


def test_cancelled_call_leaves_queue(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server()
    first = server.hold_first_batch()

    cancelled = server.send(2)
    server.wait_until_queued(2)
    assert cancelled.cancel()
    server.wait_until_queued(0)
    server.encoder.gate.set()

    assert len(first.result(WAIT_S).embeddings) == 1
    assert server.encoder.batch_sizes == [1]


def test_full_queue_resource_exhausted(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server(max_batch_size=2, max_queued_items=4)
    first = server.hold_first_batch()
    queued = [server.send(2), server.send(2)]
    server.wait_until_queued(4)

    with pytest.raises(grpc.RpcError) as raised:
        server.send(1).result(WAIT_S)
    server.encoder.gate.set()

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "image encoder's queue contains 4 of at most 4 items" in raised.value.details()
    assert len(first.result(WAIT_S).embeddings) == 1
    assert [len(call.result(WAIT_S).embeddings) for call in queued] == [2, 2]
    assert len(server.send(1).result(WAIT_S).embeddings) == 1


def test_forward_failure_fails_batch_only(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server()
    server.encoder.failing_batches = {2}
    first = server.hold_first_batch()
    failing = [server.send(1), server.send(2)]
    server.wait_until_queued(3)
    server.encoder.gate.set()

    assert len(first.result(WAIT_S).embeddings) == 1
    for call in failing:
        error = call.exception(WAIT_S)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "forward pass failed for the batch holding this call" in error.details()
        assert "simulated" not in error.details()
    assert len(server.send(2).result(WAIT_S).embeddings) == 2
    assert server.encoder.batch_sizes == [1, 3, 2]


def test_stop_finishes_queued_calls(start_gated_server: Callable[..., GatedServer]) -> None:
    server = start_gated_server()
    first = server.hold_first_batch()
    queued = [server.send(2), server.send(1)]
    server.wait_until_queued(3)

    stopper = threading.Thread(target=server.service.stop, kwargs={"grace_s": WAIT_S})
    stopper.start()
    time.sleep(0.2)
    server.encoder.gate.set()
    stopper.join(WAIT_S)

    assert not stopper.is_alive()
    assert len(first.result(WAIT_S).embeddings) == 1
    assert [len(call.result(WAIT_S).embeddings) for call in queued] == [2, 1]
    assert server.encoder.batch_sizes == [1, 3]


def test_batching_off_embeds_each_call(server_stop: list[ServiceServer]) -> None:
    encoder = GatedImageEncoder()
    settings = ImageEncoderSettings.from_env({}, dynamic_batching=False, device="cpu")
    service, port = image_encoder.create_server("127.0.0.1:0", settings, encoder)
    service.start()
    server_stop.append(service)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)
        requests = [image_encoder_pb2.EmbedImagesRequest(images=SMALL_IMAGES[:count]) for count in (1, 2, 3)]
        calls = [stub.EmbedImages.future(request, timeout=WAIT_S) for request in requests]
        responses = [call.result(WAIT_S) for call in calls]

    assert sorted(encoder.batch_sizes) == [1, 2, 3]
    for request, response in zip(requests, responses, strict=True):
        images = [decode_image(data, max_pixels=MAX_IMAGE_PIXELS) for data in request.images]
        # The unbatched result, computed without the gate and the batch counting of the subclass.
        expected = ImageEncoder.embed(encoder, images)
        received = np.stack([from_message(embedding) for embedding in response.embeddings])  # (N, D)
        np.testing.assert_allclose(received, expected, rtol=0, atol=1e-6)
