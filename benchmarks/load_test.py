"""Load test of the local stack: N concurrent clients for a bounded time against the three services.

Starts the image encoder, text encoder and predictor of a main-job run as separate processes on
127.0.0.1, then runs `--clients` client threads for `--duration` seconds. Each client picks its
next call at random (seeded): a product id only (the cached path), a batch of 16 product ids, or a
product's image, title and attributes inline with no id (the cold path, through both encoders).
Write-back is off, so the stored features stay as the run wrote them. Every second the resident
memory of each service is sampled.

The report gives the calls served and failed per kind with p50 and p99 latency, and each
service's memory after start, after the warm-up (the first fifth of the run) and at the end.
The targets: no failed call, and no memory growth after warm-up beyond noise.

    .venv/bin/python benchmarks/load_test.py [--run runs/bench-sample] [--clients 16] [--duration 120]
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks._common import describe_machine, load_products, print_table, resident_mib
from benchmarks._predictor import DEFAULT_RUN, ServedRun, ensure_run
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from training.scoring import attribute_values
from training.stack import start_stack, stop_stack

logger = logging.getLogger(__name__)

KINDS = ("by id", "batch of 16 ids", "inline content")
WEIGHTS = (0.7, 0.1, 0.2)
BATCH = 16
WARM_UP_SHARE = 0.2


@dataclass
class KindStats:
    """Outcomes of one kind of call."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # gRPC status name -> count

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class LoadReport:
    """Results of one load test."""

    clients: int
    duration_s: float
    stats: dict[str, KindStats]
    memory_mib: dict[str, list[float]]  # service name -> samples, one per second
    exit_statuses: dict[str, int | None]

    @property
    def served(self) -> int:
        return sum(len(stats.latencies_s) for stats in self.stats.values())

    @property
    def errors(self) -> int:
        return sum(sum(stats.errors.values()) for stats in self.stats.values())

    def memory_growth_mib(self, service: str) -> float:
        """Return the resident memory at the end minus the memory after warm-up, in MiB."""
        samples = self.memory_mib[service]
        return samples[-1] - samples[_warm_up_index(samples)]


def _warm_up_index(samples: Sequence[float]) -> int:
    return min(len(samples) - 1, int(len(samples) * WARM_UP_SHARE))


def _contents(run: ServedRun, count: int) -> list[predictor_pb2.ProductContent]:
    products, _source = load_products(run.catalogue, count, spec_name=run.spec)
    contents = []
    for product in products:
        content = predictor_pb2.ProductContent(title=product.text, image=product.image or b"")
        for name, value in attribute_values(dict(product.attributes)).items():
            content.attributes[name].CopyFrom(value)
        contents.append(content)
    return contents


def run_load_test(
    run: ServedRun, *, clients: int, duration_s: float, log_dir: Path, seed: int = 0
) -> LoadReport:
    """Start the run's stack, send calls from `clients` threads for `duration_s` seconds, and stop it."""
    contents = _contents(run, 64)
    environment = {
        **run.environment,
        "PQ_PREDICTOR_WRITE_BACK": "false",
        "PQ_IMAGE_ENCODER_DEVICE": "cpu",
        "PQ_TEXT_ENCODER_DEVICE": "cpu",
        "PQ_PREDICTOR_DEVICE": "cpu",
    }
    stats = {kind: KindStats() for kind in KINDS}
    lock = threading.Lock()
    stack = start_stack(log_dir, environment)
    memory: dict[str, list[float]] = {service.name: [] for service in stack.services}
    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while True:
            for service in stack.services:
                if service.process is not None and service.process.poll() is None:
                    memory[service.name].append(resident_mib(service.process.pid))
            if stop_sampling.wait(1.0):
                return

    def client(index: int, deadline: float) -> None:
        rng = random.Random(seed * 1000 + index)
        with grpc.insecure_channel(stack.predictor.address) as channel:
            stub = predictor_grpc.QualityPredictorServiceStub(channel)
            while time.monotonic() < deadline:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                started = time.perf_counter()
                try:
                    if kind == "by id":
                        stub.PredictQuality(
                            predictor_pb2.PredictQualityRequest(product_id=rng.choice(run.product_ids)),
                            timeout=30,
                        )
                    elif kind == "batch of 16 ids":
                        ids = rng.sample(run.product_ids, min(BATCH, len(run.product_ids)))
                        batch = [
                            predictor_pb2.PredictQualityRequest(product_id=product_id) for product_id in ids
                        ]
                        stub.PredictQualityBatch(
                            predictor_pb2.PredictQualityBatchRequest(requests=batch), timeout=30
                        )
                    else:
                        stub.PredictQuality(
                            predictor_pb2.PredictQualityRequest(content=rng.choice(contents)), timeout=30
                        )
                except grpc.RpcError as error:
                    with lock:
                        stats[kind].errors[error.code().name] += 1
                    logger.warning("%s call failed: %s %s", kind, error.code().name, error.details())
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    stats[kind].latencies_s.append(elapsed)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    try:
        sampler.start()
        deadline = time.monotonic() + duration_s
        threads = [threading.Thread(target=client, args=(i, deadline)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop_sampling.set()
        sampler.join()
        exit_statuses = stop_stack(stack)
    return LoadReport(clients, duration_s, stats, memory, exit_statuses)


def print_report(report: LoadReport) -> None:
    rows = [
        (
            kind,
            len(stats.latencies_s),
            sum(stats.errors.values()),
            round(stats.percentile_ms(50), 1),
            round(stats.percentile_ms(99), 1),
            round(len(stats.latencies_s) / report.duration_s, 1),
        )
        for kind, stats in report.stats.items()
    ]
    print_table(["call", "served", "failed", "p50 ms", "p99 ms", "calls/s"], rows)
    failures = {kind: dict(stats.errors) for kind, stats in report.stats.items() if stats.errors}
    print(f"# {report.served} calls served, {report.errors} failed {failures or ''}")
    memory_rows = []
    for service, samples in report.memory_mib.items():
        if samples:
            memory_rows.append(
                (
                    service,
                    round(samples[0]),
                    round(samples[_warm_up_index(samples)]),
                    round(samples[-1]),
                    round(report.memory_growth_mib(service), 1),
                )
            )
    print_table(
        ["service", "MiB at start", "MiB after warm-up", "MiB at end", "growth after warm-up (MiB)"],
        memory_rows,
    )
    print(f"# exit statuses after SIGTERM: {report.exit_statuses}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=DEFAULT_RUN,
        help="main-job run folder with Redis features (default: %(default)s)",
    )
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent client threads (default: %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of load (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the call mix (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = ensure_run(args.run.resolve(), require_redis=False)
    print(
        f"# load test: {args.clients} clients for {args.duration:.0f} s, run {run.run_dir}, mix {dict(zip(KINDS, WEIGHTS))}"
    )
    print(f"# machine: {describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="pq-load-") as log_dir:
        report = run_load_test(
            run, clients=args.clients, duration_s=args.duration, log_dir=Path(log_dir), seed=args.seed
        )
    print_report(report)
    if report.errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
