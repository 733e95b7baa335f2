"""Benchmark an encoder service against the same encoder in process (benchmarks 1 and 2 of docs/benchmarks.md).

Clients send one image (or text) per EmbedImages (or EmbedTexts) call at each concurrency. The
in-process limit embeds the same items, decoded beforehand, in batches of each `--limit-batch`
size with the runtime the service uses, in this process, and takes the fastest batch size: the
model's own work without decoding, gRPC, queueing or per-call overhead. Rounds alternate limit
and service so that noise from other jobs hits both.

    .venv/bin/python benchmarks/encoder_service.py --modality image [--items 256] [--rounds 2]
    .venv/bin/python benchmarks/encoder_service.py --modality text --env PQ_TEXT_ENCODER_RUNTIME=torch

`--env NAME=VALUE` settings go to the service, and the runtime setting among them is also used
for the in-process encoder.
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
    LoadResult,
    default_catalogue,
    describe_machine,
    load_products,
    median,
    print_table,
    resident_mib,
    run_concurrently,
    running_service,
)
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc

MAX_PIXELS = 40_000_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modality", choices=("image", "text"), required=True)
    parser.add_argument(
        "--catalogue", type=Path, default=default_catalogue(), help="catalogue folder (default: %(default)s)"
    )
    parser.add_argument("--items", type=int, default=256, help="items per measurement (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client threads (default: 1 8 32)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; cells are medians (default: %(default)s)"
    )
    parser.add_argument(
        "--limit-batch",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="in-process batch sizes (default: 1 8 32)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="service setting")
    return parser.parse_args(argv)


def _environment(pairs: Sequence[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        environment[name] = value
    return environment


def _in_process_limit(
    modality: str, items: Sequence[bytes] | Sequence[str], runtime: str | None, batches: Sequence[int]
) -> tuple[Callable[[int], LoadResult], float]:
    """Load the encoder here; return a function that embeds all items once in batches, timed.

    Images are decoded once beforehand, so the limit is preprocessing and the forward pass only.
    The second value is the decoding time per image in milliseconds (0 for texts).
    """
    kwargs = {"device": "cpu"} if runtime is None else {"device": "cpu", "runtime": runtime}
    decode_ms = 0.0
    if modality == "image":
        from encoders.image import decode_image, load_image_encoder

        image_encoder = load_image_encoder(**kwargs)
        started = time.perf_counter()
        decoded = [decode_image(data, max_pixels=MAX_PIXELS) for data in items]
        decode_ms = 1000 * (time.perf_counter() - started) / len(items)

        def embed_chunk(start: int, stop: int) -> None:
            image_encoder.embed(decoded[start:stop])
    else:
        from encoders.text import load_text_encoder

        text_encoder = load_text_encoder(**kwargs)

        def embed_chunk(start: int, stop: int) -> None:
            text_encoder.embed(items[start:stop])

    def run(batch: int) -> LoadResult:
        latencies = []
        started = time.perf_counter()
        for start in range(0, len(items), batch):
            chunk_started = time.perf_counter()
            embed_chunk(start, start + batch)
            latencies.append(time.perf_counter() - chunk_started)
        return LoadResult(latencies, time.perf_counter() - started, len(items))

    for batch in batches:
        embed_chunk(0, batch)  # warm-up
    return run, decode_ms


def _service_call(
    modality: str, address: str, items: Sequence[bytes] | Sequence[str]
) -> tuple[Callable[[int], int], grpc.Channel]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    if modality == "image":
        image_stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channel)

        def call(index: int) -> int:
            image_stub.EmbedImages(
                image_encoder_pb2.EmbedImagesRequest(images=[items[index % len(items)]]), timeout=120
            )
            return 1
    else:
        text_stub = text_encoder_pb2_grpc.TextEncoderServiceStub(channel)

        def call(index: int) -> int:
            text_stub.EmbedTexts(
                text_encoder_pb2.EmbedTextsRequest(texts=[items[index % len(items)]]), timeout=120
            )
            return 1

    return call, channel


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    environment = _environment(args.env)
    prefix = "PQ_IMAGE_ENCODER_" if args.modality == "image" else "PQ_TEXT_ENCODER_"
    environment.setdefault(f"{prefix}DEVICE", "cpu")
    # Without a runtime setting the service uses its default, and so does the in-process limit.
    if args.modality == "image":
        from services.image_encoder.settings import ImageEncoderSettings as settings_type
    else:
        from services.text_encoder.settings import TextEncoderSettings as settings_type
    runtime = environment.get(f"{prefix}RUNTIME", settings_type.model_fields["runtime"].default)

    products, source = load_products(args.catalogue, args.items)
    items: list[bytes] | list[str] = (
        [p.image for p in products if p.image is not None]
        if args.modality == "image"
        else [p.text for p in products]
    )
    unit = "images" if args.modality == "image" else "texts"
    print(f"# {args.modality} encoder service vs in process: {len(items)} {unit} from {source}")
    print(f"# machine: {describe_machine()}; runtime {runtime}; service settings: {environment}")

    limit, decode_ms = _in_process_limit(args.modality, items, runtime, args.limit_batch)
    module = "services.image_encoder" if args.modality == "image" else "services.text_encoder"
    with (
        tempfile.TemporaryDirectory(prefix="pq-bench-") as log_dir,
        running_service(module, f"{prefix}ADDRESS", environment, Path(log_dir)) as (address, pid),
    ):
        memory_at_start = resident_mib(pid)
        call, channel = _service_call(args.modality, address, items)
        limit_rates: dict[int, list[float]] = {batch: [] for batch in args.limit_batch}
        service_runs: dict[int, list[LoadResult]] = {c: [] for c in args.concurrency}
        for _ in range(args.rounds):
            for batch in args.limit_batch:
                limit_rates[batch].append(limit(batch).items_per_s)
            for concurrency in args.concurrency:
                service_runs[concurrency].append(run_concurrently(call, len(items), concurrency, warmup=4))
        memory_at_end = resident_mib(pid)
        channel.close()

    best_batch = max(args.limit_batch, key=lambda batch: median(limit_rates[batch]))
    limit_rate = median(limit_rates[best_batch])
    per_batch = ", ".join(f"batch {batch}: {median(rates):.1f}/s" for batch, rates in limit_rates.items())
    rows = []
    for concurrency, runs in service_runs.items():
        rate = median([run.items_per_s for run in runs])
        rows.append(
            (
                concurrency,
                round(rate, 1),
                round(limit_rate, 1),
                round(rate / limit_rate, 2),
                round(median([run.percentile_ms(50) for run in runs]), 1),
                round(median([run.percentile_ms(99) for run in runs]), 1),
            )
        )
    print(
        f"# in-process limit without decoding ({per_batch}); the fastest, batch {best_batch}, is the limit; "
        f"medians of {args.rounds} rounds"
    )
    if decode_ms:
        print(
            f"# decoding took {decode_ms:.2f} ms per image in process; the service decodes, the limit does not"
        )
    print_table(
        ["concurrency", f"service {unit}/s", f"in-process {unit}/s", "service / limit", "p50 ms", "p99 ms"],
        rows,
    )
    print(
        f"# service resident memory: {memory_at_start:.0f} MiB after start, {memory_at_end:.0f} MiB at the end"
    )


if __name__ == "__main__":
    main()
