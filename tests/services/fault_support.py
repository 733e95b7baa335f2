"""Shared pieces of the fault-injection tests: a small checkpoint and fake encoders on real gRPC servers.

The fake encoders return fixed vectors with the model ids of SCHEMA, and can be set to sleep or to
fail with a status, so a test controls exactly how an encoder misbehaves.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import torch

from features.schema import FeatureSchema
from fusion.attributes import AttributeEncoder
from fusion.checkpoint import CheckpointMetadata, save_checkpoint
from fusion.labels import LabelScaling
from fusion.model import FusionConfig, FusionModel
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from services.common import embedding_codec

SCHEMA = FeatureSchema(
    numeric_attributes=["price"],
    categorical_attributes=["brand"],
    image_model_id="image-fault@00000000",
    text_model_id="text-fault@00000000",
    image_embedding_dim=4,
    text_embedding_dim=3,
)
IMAGE_VECTOR = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
TEXT_VECTOR = np.array([0.6, 0.0, 0.8], dtype=np.float32)
MODEL_VERSION = "test-faults-20260101T000000"


def save_small_checkpoint(directory: Path) -> Path:
    """Save an untrained concat fusion model over SCHEMA; its scores are arbitrary but deterministic."""
    frame = pd.DataFrame({"price": [100.0, 250.0, 900.0, 40.0], "brand": ["acme", "acme", "zen", "zen"]})
    attribute_encoder = AttributeEncoder(["price"], ["brand"], ["price"], min_count=1).fit(frame)
    torch.manual_seed(5)
    model = FusionModel(
        FusionConfig(
            image_dim=SCHEMA.image_embedding_dim,
            text_dim=SCHEMA.text_embedding_dim,
            numeric_dim=attribute_encoder.numeric_dim,
            categorical_cardinalities=attribute_encoder.categorical_cardinalities,
            head="concat",
            hidden_dim=16,
            modality_dim=8,
            categorical_embedding_dim=4,
        )
    )
    metadata = CheckpointMetadata(
        model_version=MODEL_VERSION,
        label_name="avg_rating",
        label_scaling=LabelScaling("regression", mean=7.0, std=0.5),
        feature_schema=SCHEMA.to_dict(),
        image_model_id=SCHEMA.image_model_id,
        text_model_id=SCHEMA.text_model_id,
    )
    return save_checkpoint(directory, model, attribute_encoder, metadata)


@dataclass
class Behaviour:
    """How a fake encoder responds: after `delay_s` seconds, with vectors or with `status`."""

    delay_s: float = 0.0
    status: grpc.StatusCode | None = None
    details: str | None = None  # the status message; None gives a generic one
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def act(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
        # Sleep in steps so a cancelled or timed-out call frees its thread early.
        end = time.monotonic() + self.delay_s
        while time.monotonic() < end and context.is_active():
            time.sleep(0.02)
        if self.status is not None:
            context.abort(self.status, self.details or f"fake encoder fails with {self.status.name}")


class FakeImageEncoder(image_encoder_pb2_grpc.ImageEncoderServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    def EmbedImages(
        self, request: image_encoder_pb2.EmbedImagesRequest, context: grpc.ServicerContext
    ) -> image_encoder_pb2.EmbedImagesResponse:
        self.behaviour.act(context)
        return image_encoder_pb2.EmbedImagesResponse(
            embeddings=[embedding_codec.to_message(IMAGE_VECTOR) for _ in request.images],
            model_id=SCHEMA.image_model_id,
            embedding_dim=SCHEMA.image_embedding_dim,
        )


class FakeTextEncoder(text_encoder_pb2_grpc.TextEncoderServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    def EmbedTexts(
        self, request: text_encoder_pb2.EmbedTextsRequest, context: grpc.ServicerContext
    ) -> text_encoder_pb2.EmbedTextsResponse:
        self.behaviour.act(context)
        results = [
            text_encoder_pb2.TextEmbedding(embedding=embedding_codec.to_message(TEXT_VECTOR), token_count=3)
            for _ in request.texts
        ]
        return text_encoder_pb2.EmbedTextsResponse(
            results=results,
            model_id=SCHEMA.text_model_id,
            embedding_dim=SCHEMA.text_embedding_dim,
            max_tokens=256,
        )


@dataclass
class FakeEncoders:
    """Both fake encoders, each on its own server on 127.0.0.1."""

    image: Behaviour
    text: Behaviour
    image_address: str
    text_address: str
    servers: list[grpc.Server]

    def stop(self) -> None:
        for server in self.servers:
            server.stop(0).wait()


def start_fake_encoders() -> FakeEncoders:
    image, text = Behaviour(), Behaviour()
    servers, addresses = [], []
    for register in (
        lambda server: image_encoder_pb2_grpc.add_ImageEncoderServiceServicer_to_server(
            FakeImageEncoder(image), server
        ),
        lambda server: text_encoder_pb2_grpc.add_TextEncoderServiceServicer_to_server(
            FakeTextEncoder(text), server
        ),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    return FakeEncoders(image, text, addresses[0], addresses[1], servers)


def restart_text_encoder(encoders: FakeEncoders) -> grpc.Server:
    """Start a new fake text encoder on the stopped one's address, with the same behaviour."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    text_encoder_pb2_grpc.add_TextEncoderServiceServicer_to_server(FakeTextEncoder(encoders.text), server)
    if server.add_insecure_port(encoders.text_address) == 0:
        raise OSError(f"could not bind the fake text encoder to {encoders.text_address} again")
    server.start()
    return server
