"""Fixtures of the feature store tests: a small catalogue, a Feast project per test, real Redis.

Helpers are fixtures (some return functions) because test modules cannot import a conftest
that lives outside a package.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from features.config import FeatureStoreSettings
from features.schema import FeatureSchema

# The shared Redis of the test suite, "host:port".
REDIS_ADDRESS = os.environ.get("PQ_TEST_REDIS", "127.0.0.1:6379")

IMAGE_DIM = 16
TEXT_DIM = 8


@dataclass
class Catalogue:
    """Offline feature values of a few products, with gaps of every kind."""

    product_ids: list[str]
    attributes: pd.DataFrame
    image_vectors: np.ndarray  # (N, IMAGE_DIM), NaN rows where the image is missing
    text_vectors: list[np.ndarray | None]  # (TEXT_DIM,) each, None where the text is missing
    event_time: datetime


def make_schema(image_model_id: str = "efficientnet_lite0.imagenet.224@0123abcd") -> FeatureSchema:
    """Return the schema of the test catalogue, with small embedding sizes."""
    return FeatureSchema(
        numeric_attributes=["price", "rating"],
        categorical_attributes=["brand"],
        image_model_id=image_model_id,
        text_model_id="all-minilm-l6-v2.256@89abcdef",
        image_embedding_dim=IMAGE_DIM,
        text_embedding_dim=TEXT_DIM,
    )


def make_catalogue(
    count: int = 12, *, prefix: str = "p", seed: int = 0, event_time: datetime | None = None
) -> Catalogue:
    """Return `count` products: every 4th lacks an image, every 5th its text, every 3rd a price
    and every 6th (from the second) a brand."""
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{index:03d}" for index in range(count)]
    attributes = pd.DataFrame(
        {
            "price": [np.nan if index % 3 == 0 else float(rng.uniform(1, 100)) for index in range(count)],
            "rating": rng.uniform(0, 5, count),
            "brand": [None if index % 6 == 1 else f"brand_{index % 4}" for index in range(count)],
        }
    )
    images = rng.standard_normal((count, IMAGE_DIM)).astype(np.float32)
    images[::4] = np.nan
    texts: list[np.ndarray | None] = [
        None if index % 5 == 0 else rng.standard_normal(TEXT_DIM).astype(np.float32) for index in range(count)
    ]
    moment = event_time or datetime.now(timezone.utc) - timedelta(hours=1)
    return Catalogue(ids, attributes, images, texts, moment)


def make_redis_settings(project: str, data_dir: Path, address: str = REDIS_ADDRESS) -> FeatureStoreSettings:
    """Return settings of a Redis-backed store for `project` with its files in `data_dir`."""
    return FeatureStoreSettings(
        online_store="redis",
        redis_connection_string=address,
        feast_project=project,
        feature_repo_dir=data_dir,
        feature_data_dir=data_dir,
    )


def new_project_name() -> str:
    return f"pqtest_{uuid.uuid4().hex[:12]}"


def delete_project_keys(client: redis.Redis, project: str) -> int:
    """Delete the Redis hashes of a Feast project (their keys end with the project name)."""
    keys = list(client.scan_iter(match=b"*" + project.encode("utf-8"), count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


def snapshot_project(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    """Return every hash of a Feast project, for before/after comparisons."""
    keys = client.scan_iter(match=b"*" + project.encode("utf-8"), count=1000)
    # redis-py's annotations include the asyncio client's awaitable results.
    return {key: client.hgetall(key) for key in keys}  # type: ignore[misc]


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private redis-server on 127.0.0.1 that a test may stop and start again."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start within 10 s") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass(frozen=True)
class Helpers:
    """Functions of this conftest, handed to tests through the `helpers` fixture."""

    make_schema: Callable[..., FeatureSchema] = make_schema
    make_catalogue: Callable[..., Catalogue] = make_catalogue
    make_redis_settings: Callable[..., FeatureStoreSettings] = make_redis_settings
    new_project_name: Callable[[], str] = new_project_name
    delete_project_keys: Callable[[redis.Redis, str], int] = delete_project_keys
    snapshot_project: Callable[[redis.Redis, str], dict[bytes, dict[bytes, bytes]]] = snapshot_project
    closed_port: Callable[[], int] = closed_port


@pytest.fixture(scope="session")
def helpers() -> Helpers:
    return Helpers()


@pytest.fixture
def schema() -> FeatureSchema:
    return make_schema()


@pytest.fixture
def catalogue() -> Catalogue:
    return make_catalogue()


@pytest.fixture(scope="session")
def redis_address(redis_client: redis.Redis) -> str:
    """The shared test Redis as "host:port", checked to be reachable."""
    return REDIS_ADDRESS


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the shared test Redis; fails the test when Redis is unavailable."""
    host, _, port = REDIS_ADDRESS.rpartition(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.fail(f"these tests need Redis at {REDIS_ADDRESS} (PQ_TEST_REDIS), which is unavailable: {error}")
    yield client
    client.close()


@pytest.fixture
def project(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh Feast project name; its Redis keys are deleted afterwards."""
    name = new_project_name()
    yield name
    delete_project_keys(redis_client, name)


@pytest.fixture
def redis_settings(project: str, tmp_path: Path) -> FeatureStoreSettings:
    """Settings of a Redis-backed store of this test alone."""
    return make_redis_settings(project, tmp_path / "store")


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> FeatureStoreSettings:
    """Settings of a SQLite-backed store in this test's temporary directory."""
    return FeatureStoreSettings(
        online_store="sqlite",
        feast_project=new_project_name(),
        feature_repo_dir=tmp_path / "store",
        feature_data_dir=tmp_path / "store",
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, so that stopping it disturbs no one else."""
    server = RedisServer(closed_port(), tmp_path)
    server.start()
    yield server
    server.stop()
