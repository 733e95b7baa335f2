"""Benchmark the encoders' inference runtimes in one process, side by side.

Measures images/s of EfficientNet-Lite0 in torch eager, torch eager with channels-last memory
format, torch.compile and ONNX Runtime, and texts/s of all-MiniLM-L6-v2 in torch eager and ONNX
Runtime, at batch sizes 1, 8 and 32 on the CPU. Each timed call is a full `embed` of decoded images
or raw texts, so preprocessing and tokenisation are included. Within a batch size the runtimes take
turns in several rounds, in a rotating order, so load from other jobs on a shared machine hits all
of them alike. The table gives each runtime's throughput, its ratio to torch eager and the max
absolute difference of its embeddings from torch eager on the same 32 inputs.

    .venv/bin/python benchmarks/encoder_runtimes.py [--catalogue ../shared/datasets/boardgames]
        [--seconds 3] [--no-compile] [--threads N]

Images and texts come from the catalogue folder (products.csv and images/), or from a generated
sample catalogue when the folder is missing. ONNX exports go to a temporary cache directory, so the
load time includes the export.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from PIL import Image

from encoders.image import ImageEncoder, decode_image, get_image_backbone, load_image_encoder
from encoders.image.encoder import weights_sha256
from encoders.runtime import available_cores
from encoders.text import TextEncoder, load_text_encoder
from training.catalogue import Catalogue, default_datasets_dir, load_catalogue
from training.spec import load_spec

logger = logging.getLogger("benchmarks.encoder_runtimes")

INPUTS = 64  # distinct images and texts that the timed batches cycle through
CHECK_INPUTS = 32  # inputs on which each runtime is compared with torch eager
ROUNDS = 3

Loaded = TypeVar("Loaded")


@dataclass
class Cell:
    """Timings of one runtime at one batch size, summed over the rounds."""

    items: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Contender:
    """One runtime under test: its embed function, load time and agreement with torch eager."""

    name: str
    embed: Callable[[Sequence[Any]], np.ndarray]  # N images or texts -> (N, D) float32
    load_s: float
    max_abs_difference: float = float("nan")
    cells: dict[int, Cell] = field(default_factory=dict)
    failure: str | None = None  # why the runtime could not run, for torch.compile


def _load_catalogue(folder: Path, scratch: Path) -> tuple[Catalogue, str]:
    """Load INPUTS products of `folder`, or of a sample catalogue generated into `scratch`."""
    if (folder / "products.csv").is_file():
        spec = load_spec(folder.name)
        return load_catalogue(folder, spec, limit=INPUTS, seed=0), str(folder)

    from training.sample import generate_sample_catalogue

    sample = scratch / "sample-catalogue"
    generate_sample_catalogue(sample, n_products=INPUTS, seed=0)
    source = f"a generated sample catalogue ({folder} not found)"
    return load_catalogue(sample, load_spec("sample"), seed=0), source


def _inputs(catalogue: Catalogue) -> tuple[list[Image.Image], list[str]]:
    images = []
    for path in catalogue.image_paths():
        if path is not None:
            images.append(decode_image(path.read_bytes(), max_pixels=40_000_000))
    if not images:
        raise SystemExit("the catalogue has no images to benchmark")
    texts = catalogue.texts()
    # Cycle the inputs up to INPUTS, so a catalogue with fewer products still fills a batch of 32.
    return [images[i % len(images)] for i in range(INPUTS)], [texts[i % len(texts)] for i in range(INPUTS)]


def _timed(load: Callable[[], Loaded]) -> tuple[Loaded, float]:
    started = time.perf_counter()
    loaded = load()
    return loaded, time.perf_counter() - started


def _text_vectors(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    return encoder.embed(texts).vectors  # (N, 384)


def _compiled_image_encoder() -> ImageEncoder:
    # ImageEncoder has no torch.compile runtime, so this builds the default backbone the way
    # load_image_encoder does and hands the compiled module to the encoder.
    spec = get_image_backbone("efficientnet_lite0")
    path = spec.resolve_weights_path()
    data = path.read_bytes()
    state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = spec.build(state_dict).eval()
    compiled = cast(torch.nn.Module, torch.compile(model))  # an OptimizedModule wrapping `model`
    return ImageEncoder(spec, compiled, device=torch.device("cpu"), weights_sha256=weights_sha256(path, data))


def _image_contenders(threads: int | None, cache_dir: Path, compile_model: bool) -> list[Contender]:
    contenders = []
    for runtime in ("torch", "torch_channels_last", "onnx"):
        load = partial(
            load_image_encoder, device="cpu", runtime=runtime, threads=threads, onnx_cache_dir=cache_dir
        )
        encoder, seconds = _timed(load)
        contenders.append(Contender(runtime, encoder.embed, seconds))
    if compile_model:
        compiled, seconds = _timed(_compiled_image_encoder)
        contenders.insert(2, Contender("torch_compile", compiled.embed, seconds))
    return contenders


def _text_contenders(threads: int | None, cache_dir: Path) -> list[Contender]:
    contenders = []
    for runtime in ("torch", "onnx"):
        load = partial(
            load_text_encoder, device="cpu", runtime=runtime, threads=threads, onnx_cache_dir=cache_dir
        )
        encoder, seconds = _timed(load)
        contenders.append(Contender(runtime, partial(_text_vectors, encoder), seconds))
    return contenders


def _warm_up(contenders: list[Contender], batches: list[list[object]], batch_size: int) -> None:
    # The first call at a new batch size pays one-time costs: torch.compile compiles a graph for the
    # new shape (counted into the compile contender's load time), and allocators grow their pools.
    for contender in contenders:
        started = time.perf_counter()
        if contender.name != "torch_compile":
            contender.embed(batches[0])
        else:
            try:
                contender.embed(batches[0])
            except (RuntimeError, OSError) as error:
                # torch._dynamo's errors derive from RuntimeError, and a missing C++ compiler raises OSError.
                logger.error("torch.compile failed at batch %d: %s", batch_size, error)
                contender.failure = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            contender.load_s += time.perf_counter() - started
        seconds = time.perf_counter() - started
        logger.info("warm-up of %s at batch %d took %.2f s", contender.name, batch_size, seconds)


def _measure(contenders: list[Contender], inputs: Sequence[object], batch_size: int, seconds: float) -> None:
    """Time every contender at `batch_size`, `seconds` each in total, taking turns over ROUNDS rounds."""
    starts = range(0, len(inputs) - batch_size + 1, batch_size)
    batches = [list(inputs[start : start + batch_size]) for start in starts]
    _warm_up([contender for contender in contenders if contender.failure is None], batches, batch_size)
    running = [contender for contender in contenders if contender.failure is None]
    for contender in contenders:
        contender.cells[batch_size] = Cell()

    for round_index in range(ROUNDS):
        shift = round_index % len(running)
        for contender in running[shift:] + running[:shift]:
            cell = contender.cells[batch_size]
            deadline = time.perf_counter() + seconds / ROUNDS
            call = 0
            while call == 0 or time.perf_counter() < deadline:
                batch = batches[call % len(batches)]
                started = time.perf_counter()
                contender.embed(batch)
                cell.seconds += time.perf_counter() - started
                cell.items += len(batch)
                call += 1


def _compare(contenders: list[Contender], inputs: Sequence[object]) -> None:
    check = list(inputs[:CHECK_INPUTS])
    reference = contenders[0].embed(check)  # (32, D) from torch eager
    for contender in contenders:
        if contender.failure is None:
            contender.max_abs_difference = float(np.abs(contender.embed(check) - reference).max())


def _table(title: str, unit: str, contenders: list[Contender], batch_sizes: Sequence[int]) -> str:
    lines = [
        f"\n{title}\n",
        f"| batch | runtime | {unit}/s | vs torch eager | max abs diff from torch | load s |",
        "|---|---|---|---|---|---|",
    ]
    for batch_size in batch_sizes:
        baseline = contenders[0].cells[batch_size].items_per_s
        for contender in contenders:
            if contender.failure is not None:
                lines.append(f"| {batch_size} | {contender.name} | failed: {contender.failure} | | | |")
                continue
            rate = contender.cells[batch_size].items_per_s
            lines.append(
                f"| {batch_size} | {contender.name} | {rate:.1f} | {rate / baseline:.2f} | "
                f"{contender.max_abs_difference:.1e} | {contender.load_s:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {available_cores()} cores available to the process"


def _load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--catalogue", type=Path, default=default_datasets_dir() / "boardgames",
        help="catalogue folder with products.csv and images/ (default: boardgames under PQ_DATASETS_DIR)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per runtime and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="batch sizes to time")
    parser.add_argument(
        "--threads", type=int, default=None,
        help=(
            "intra-op threads of torch and ONNX Runtime (default: torch's own setting, and all "
            "available cores for ONNX Runtime)"
        ),
    )
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    arguments = parser.parse_args(argv)
    if any(size < 1 or size > INPUTS for size in arguments.batch_sizes):
        parser.error(f"batch sizes must be between 1 and {INPUTS}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="pq-runtime-bench-") as scratch:
        catalogue, source = _load_catalogue(arguments.catalogue, Path(scratch))
        images, texts = _inputs(catalogue)  # decoded into memory, so the folder may go
    started = time.perf_counter()
    load_before = _load_average()

    with tempfile.TemporaryDirectory(prefix="pq-onnx-bench-") as cache_dir:
        image_contenders = _image_contenders(arguments.threads, Path(cache_dir), not arguments.no_compile)
        for batch_size in arguments.batch_sizes:
            _measure(image_contenders, images, batch_size, arguments.seconds)
        _compare(image_contenders, images)

        text_contenders = _text_contenders(arguments.threads, Path(cache_dir))
        for batch_size in arguments.batch_sizes:
            _measure(text_contenders, texts, batch_size, arguments.seconds)
        _compare(text_contenders, texts)

    import onnxruntime

    sys.stdout.write(
        f"\nMachine: {_machine()}; torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"onnxruntime {onnxruntime.__version__} with {arguments.threads or available_cores()} "
        "intra-op threads.\n"
        f"Inputs: {INPUTS} images and texts from {source}; {arguments.seconds:g} s per cell in "
        f"{ROUNDS} rounds; "
        f"load average {load_before} before and {_load_average()} after; "
        f"{time.perf_counter() - started:.0f} s in all.\n"
        "Load s: loading the encoder, with the ONNX export for onnx and the first compilation at each "
        "batch size for torch_compile.\n"
    )
    sys.stdout.write(_table("EfficientNet-Lite0 (1280-d pooled features), embed of decoded images",
                            "images", image_contenders, arguments.batch_sizes))
    sys.stdout.write(_table("all-MiniLM-L6-v2 (384-d, mean pooled, L2-normalised), embed of raw texts",
                            "texts", text_contenders, arguments.batch_sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
