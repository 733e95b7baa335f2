"""Benchmark online feature reads: the Redis fast path against the Feast SDK, side by side.

Writes synthetic features of real sizes (1280-d image and 384-d text embeddings, 6 attributes) for
`--products` products into Redis, under a Feast project of its own. Then it reads batches of 1 and
64 products through both readers in alternation and prints each median latency and their ratio.
The project's keys are deleted at the end.

    .venv/bin/python benchmarks/feature_read.py [--redis 127.0.0.1:6379] [--reads 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from features.config import FeatureStoreSettings, parse_redis_connection_string
from features.feast_reader import FeastFeatureReader
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.redis_reader import RedisFeatureReader
from features.schema import FeatureSchema

IMAGE_DIM = 1280
TEXT_DIM = 384


def _write_features(settings: FeatureStoreSettings, schema: FeatureSchema, products: int) -> list[str]:
    rng = np.random.default_rng(0)
    product_ids = [f"bench{index:05d}" for index in range(products)]
    attributes = pd.DataFrame(
        {
            "price": rng.uniform(5, 100, products),
            "year": rng.integers(1990, 2025, products).astype(float),
            "players": rng.integers(1, 8, products).astype(float),
            "playtime": rng.uniform(10, 240, products),
            "category": rng.choice(["Strategy", "Family", "Party"], products),
            "brand": rng.choice(["a", "b", "c", "d"], products),
        }
    )
    images = rng.standard_normal((products, IMAGE_DIM)).astype(np.float32)
    texts = rng.standard_normal((products, TEXT_DIM)).astype(np.float32)
    write_offline_features(
        settings.feature_data_dir, schema, product_ids, attributes, images, texts,
        datetime.now(UTC) - timedelta(minutes=1),
    )
    apply_and_materialize(settings, schema)
    return product_ids


def _median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Redis address host:port")
    parser.add_argument("--reads", type=int, default=300, help="timed reads per reader and batch size")
    parser.add_argument("--products", type=int, default=256, help="products written to Redis")
    arguments = parser.parse_args(argv)

    project = f"pqbench_{uuid.uuid4().hex[:10]}"
    schema = FeatureSchema(
        numeric_attributes=["price", "year", "players", "playtime"],
        categorical_attributes=["category", "brand"],
        image_model_id="efficientnet_lite0.imagenet.224@bench000",
        text_model_id="all-minilm-l6-v2.mean.256@bench000",
        image_embedding_dim=IMAGE_DIM,
        text_embedding_dim=TEXT_DIM,
    )
    address = parse_redis_connection_string(arguments.redis)
    client = redis.Redis(host=address.host, port=address.port)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = FeatureStoreSettings(
            online_store="redis",
            redis_connection_string=arguments.redis,
            feast_project=project,
            feature_repo_dir=Path(data_dir),
            feature_data_dir=Path(data_dir),
        )
        try:
            product_ids = _write_features(settings, schema, arguments.products)
            fast = RedisFeatureReader(settings, schema)
            sdk = FeastFeatureReader(settings, schema)
            rng = np.random.default_rng(1)
            sys.stdout.write(f"project {project}, {arguments.reads} timed reads each, medians:\n")
            sys.stdout.write("| products | fast path (ms) | Feast SDK (ms) | SDK / fast path |\n|---|---|---|---|\n")
            for batch in (1, 64):
                timings: dict[str, list[float]] = {"fast": [], "sdk": []}
                for read in range(arguments.reads + 10):
                    ids = list(rng.choice(product_ids, batch, replace=False))
                    # Alternate which reader goes first, so drift on a shared machine hits both alike.
                    order = [("fast", fast), ("sdk", sdk)] if read % 2 == 0 else [("sdk", sdk), ("fast", fast)]
                    for name, reader in order:
                        start = time.perf_counter()
                        reader.read(ids)
                        if read >= 10:
                            timings[name].append(time.perf_counter() - start)
                fast_ms, sdk_ms = _median_ms(timings["fast"]), _median_ms(timings["sdk"])
                sys.stdout.write(f"| {batch} | {fast_ms:.3f} | {sdk_ms:.3f} | {sdk_ms / fast_ms:.1f} |\n")
            fast.close()
            sdk.close()
        finally:
            keys = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
            if keys:
                client.delete(*keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
