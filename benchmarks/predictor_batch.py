"""Benchmark batch prediction: N products in one call against N single calls (benchmark 6 of docs/benchmarks.md).

All calls give product ids only (the cached path). One PredictQualityBatch call reads the batch's
features in one Redis round trip and runs one model prediction for all of them. The single calls
run one after another and on 16 client threads. The in-process limit reads the same N products
with the predictor's reader in one call and predicts them in one batch, in this process.

    .venv/bin/python benchmarks/predictor_batch.py [--run runs/bench-sample] [--products 1000]

A run with fewer stored products than `--products` repeats ids; the table's header says so.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from benchmarks._common import (
    describe_machine,
    median,
    print_table,
    resident_mib,
    run_concurrently,
    running_service,
)
from benchmarks._predictor import DEFAULT_RUN, ensure_run
from features.config import FeatureStoreSettings
from features.online import open_reader
from fusion.loading import load_predictor
from fusion.predictions import FusionInputs
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor.server import feature_schema_of


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=DEFAULT_RUN, help="main-job run folder (default: %(default)s)"
    )
    parser.add_argument(
        "--products", type=int, default=1000, help="products per measurement (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; cells are medians (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = ensure_run(args.run.resolve())
    product_ids = [run.product_ids[i % len(run.product_ids)] for i in range(args.products)]
    environment = {
        **run.environment,
        "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": "",
        "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": "",
        "PQ_PREDICTOR_MAX_BATCH_SIZE": str(max(args.products, 1)),
    }

    store_settings = FeatureStoreSettings.from_env(run.environment)
    model = load_predictor(Path(run.environment["PQ_PREDICTOR_MODEL_PATH"]))
    schema = feature_schema_of(model)
    reader = open_reader(store_settings, schema)

    def in_process_batch() -> None:
        stored = {product.product_id: product for product in reader.read(list(dict.fromkeys(product_ids)))}
        rows = [stored[product_id] for product_id in product_ids]
        inputs = FusionInputs.from_optional(
            [row.image_embedding for row in rows],
            [row.text_embedding for row in rows],
            [row.attributes for row in rows],
            image_dim=schema.image_embedding_dim,
            text_dim=schema.text_embedding_dim,
        )
        model.predict(inputs)

    distinct = len(set(product_ids))
    print(
        f"# batch prediction: {len(product_ids)} products ({distinct} distinct ids), model {model.model_version}, run {run.run_dir}"
    )
    print(f"# machine: {describe_machine()}")
    with (
        tempfile.TemporaryDirectory(prefix="pq-bench-") as log_dir,
        running_service("services.fusion_predictor", "PQ_PREDICTOR_ADDRESS", environment, Path(log_dir)) as (
            address,
            pid,
        ),
    ):
        channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 2**20)])
        stub = predictor_grpc.QualityPredictorServiceStub(channel)
        batch_request = predictor_pb2.PredictQualityBatchRequest(
            requests=[
                predictor_pb2.PredictQualityRequest(product_id=product_id) for product_id in product_ids
            ]
        )

        def single_call(index: int) -> int:
            stub.PredictQuality(
                predictor_pb2.PredictQualityRequest(product_id=product_ids[index]), timeout=30
            )
            return 1

        in_process_batch()  # warm-up
        stub.PredictQualityBatch(batch_request, timeout=120)
        times: dict[str, list[float]] = {"limit": [], "batch": [], "single": [], "single16": []}
        for _ in range(args.rounds):
            times["limit"].append(_timed(in_process_batch))
            times["batch"].append(_timed(lambda: stub.PredictQualityBatch(batch_request, timeout=120)))
            times["single"].append(run_concurrently(single_call, len(product_ids), 1).wall_s)
            times["single16"].append(run_concurrently(single_call, len(product_ids), 16).wall_s)
        memory = resident_mib(pid)
        channel.close()
    reader.close()

    batch_s = median(times["batch"])
    labels = {
        "limit": "in process: one read, one prediction (limit)",
        "batch": "service: one PredictQualityBatch call",
        "single": "service: single calls, 1 client thread",
        "single16": "service: single calls, 16 client threads",
    }
    rows = []
    for key, label in labels.items():
        seconds = median(times[key])
        rows.append(
            (label, round(seconds, 3), round(len(product_ids) / seconds), round(seconds / batch_s, 2))
        )
    print(f"# medians of {args.rounds} rounds")
    print_table(["how", "seconds", "products/s", "time / batch call"], rows)
    print(f"# predictor resident memory at the end: {memory:.0f} MiB")


if __name__ == "__main__":
    main()
