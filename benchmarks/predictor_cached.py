"""Benchmark the predictor's cached path against its in-process limit (benchmark 3 of docs/benchmarks.md).

Clients call PredictQuality with a product id only, so the predictor reads the product's stored
attributes and embeddings from Redis and runs the fusion model. No encoder is called. The
in-process limit does the same work in this process, one product per call at the same
concurrency: one pipelined Redis read through the predictor's own reader, then the model's
prediction with its Shapley contributions. Rounds alternate limit and service.

    .venv/bin/python benchmarks/predictor_cached.py [--run runs/bench-sample] [--calls 1000]

Without `--run`, or when the run folder is missing, the main job first runs on a sample catalogue
with the Redis online store at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from benchmarks._common import (
    LoadResult,
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
        "--calls", type=int, default=1000, help="calls per measurement (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 16], help="client threads (default: 1 16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; cells are medians (default: %(default)s)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra predictor setting"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = ensure_run(args.run.resolve())
    environment = {
        **run.environment,
        "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": "",
        "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": "",
    }
    environment.update(pair.split("=", 1) for pair in args.env)
    product_ids = run.product_ids

    # The in-process limit: the predictor's own reader and model, loaded here.
    store_settings = FeatureStoreSettings.from_env(run.environment)
    model = load_predictor(Path(run.environment["PQ_PREDICTOR_MODEL_PATH"]))
    schema = feature_schema_of(model)
    reader = open_reader(store_settings, schema)

    def limit_call(index: int) -> int:
        stored = reader.read([product_ids[index % len(product_ids)]])[0]
        inputs = FusionInputs.from_optional(
            [stored.image_embedding],
            [stored.text_embedding],
            [stored.attributes],
            image_dim=schema.image_embedding_dim,
            text_dim=schema.text_embedding_dim,
        )
        model.predict(inputs)
        return 1

    print(
        f"# predictor cached path: model {model.model_version}, {len(product_ids)} stored products, run {run.run_dir}"
    )
    print(f"# machine: {describe_machine()}")
    with (
        tempfile.TemporaryDirectory(prefix="pq-bench-") as log_dir,
        running_service("services.fusion_predictor", "PQ_PREDICTOR_ADDRESS", environment, Path(log_dir)) as (
            address,
            pid,
        ),
    ):
        memory_at_start = resident_mib(pid)
        channel = grpc.insecure_channel(address)
        stub = predictor_grpc.QualityPredictorServiceStub(channel)

        def service_call(index: int) -> int:
            request = predictor_pb2.PredictQualityRequest(product_id=product_ids[index % len(product_ids)])
            stub.PredictQuality(request, timeout=30)
            return 1

        limits: dict[int, list[LoadResult]] = {c: [] for c in args.concurrency}
        services: dict[int, list[LoadResult]] = {c: [] for c in args.concurrency}
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                limits[concurrency].append(run_concurrently(limit_call, args.calls, concurrency, warmup=20))
                services[concurrency].append(
                    run_concurrently(service_call, args.calls, concurrency, warmup=20)
                )
        memory_at_end = resident_mib(pid)
        channel.close()
    reader.close()

    rows = []
    for concurrency in args.concurrency:
        limit_p50 = median([run.percentile_ms(50) for run in limits[concurrency]])
        for path, runs in (("in process (limit)", limits[concurrency]), ("service", services[concurrency])):
            p50 = median([run.percentile_ms(50) for run in runs])
            rows.append(
                (
                    path,
                    concurrency,
                    round(p50, 3),
                    round(median([run.percentile_ms(99) for run in runs]), 3),
                    round(median([run.calls_per_s for run in runs])),
                    round(p50 / limit_p50, 2),
                )
            )
    print(f"# {args.calls} calls per cell, medians of {args.rounds} rounds")
    print_table(
        ["path", "concurrency", "p50 ms", "p99 ms", "requests/s", "p50 / limit p50 at that concurrency"], rows
    )
    print(
        f"# predictor resident memory: {memory_at_start:.0f} MiB after start, {memory_at_end:.0f} MiB at the end"
    )


if __name__ == "__main__":
    main()
