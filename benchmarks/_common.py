"""Shared parts of the serving benchmarks: test data, service processes, concurrent clients, tables.

Every benchmark measures the services against an in-process limit in the same run, alternating
between them, so load from other jobs on a shared machine hits both sides alike. Services run as
separate processes started here on free 127.0.0.1 ports and are stopped at the end.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from training.catalogue import default_datasets_dir, load_catalogue
from training.spec import load_spec
from training.stack import ServiceProcess, free_port, wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Product:
    """One product's raw content as a client would send it."""

    product_id: str
    image: bytes | None  # encoded image file
    text: str
    attributes: Mapping[str, object]


def default_catalogue() -> Path:
    """Return the board-games folder under PQ_DATASETS_DIR (default: shared/datasets beside the clone)."""
    return default_datasets_dir() / "boardgames"


def load_products(
    catalogue: Path | None, count: int, seed: int = 0, spec_name: str | None = None
) -> tuple[list[Product], str]:
    """Return `count` products with an image from `catalogue`, or from a generated sample.

    `spec_name` defaults to the catalogue folder's name. The second value names the source for the
    printed header. A missing catalogue folder falls back to a sample catalogue generated into a
    temporary folder.
    """
    if catalogue is not None and (catalogue / "products.csv").is_file():
        spec = load_spec(spec_name or catalogue.name)
        loaded = load_catalogue(catalogue, spec, seed=seed)
        source = f"{catalogue} ({len(loaded)} products)"
    else:
        from training.sample import generate_sample_catalogue

        folder = Path(tempfile.mkdtemp(prefix="pq-bench-sample-"))
        generate_sample_catalogue(folder, n_products=max(count, 50), seed=seed)
        spec = load_spec("sample")
        loaded = load_catalogue(folder, spec, seed=seed)
        source = f"generated sample catalogue ({len(loaded)} products; {catalogue} not found)"

    attribute_columns = list(spec.attribute_columns)
    products: list[Product] = []
    for product_id in loaded.product_ids:
        path = loaded.image_path(product_id)
        if path is None:
            continue
        row = loaded.frame.loc[product_id, attribute_columns].to_dict()
        products.append(Product(product_id, path.read_bytes(), loaded.text(product_id), row))
        if len(products) == count:
            break
    return products, source


@contextmanager
def running_service(
    module: str, address_variable: str, environment: Mapping[str, str], log_dir: Path
) -> Iterator[tuple[str, int]]:
    """Run `python -m module` on a free port until the block ends; yields (address, pid)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}.log"
    env = {**os.environ, **environment, address_variable: address, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    service = ServiceProcess(module, module, address, log_path, process)
    try:
        wait_until_serving(service, timeout_s=300.0)
        yield address, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def resident_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


@dataclass(frozen=True)
class LoadResult:
    """Latencies of the calls of one concurrent run and its wall time."""

    latencies_s: list[float]
    wall_s: float
    items: int  # images, texts or products handled

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return 1000 * ordered[index]


def run_concurrently(call: Callable[[int], int], calls: int, concurrency: int, warmup: int = 0) -> LoadResult:
    """Run `call(i)` for i in range(calls) on `concurrency` threads; each call returns its item count.

    `warmup` calls run first on the same threads and are not timed.
    """
    for index in range(warmup):
        call(index)
    counter = iter(range(calls))
    lock = threading.Lock()
    latencies: list[float] = []
    items = [0]

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            started = time.perf_counter()
            handled = call(index)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                items[0] += handled

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(latencies, time.perf_counter() - started, items[0])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{cell:.3g}" if isinstance(cell, float) else str(cell) for cell in row]
        print("| " + " | ".join(cells) + " |")


def describe_machine() -> str:
    """Return one line naming the CPU count, memory and load average, for the printed header."""
    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    memory = psutil.virtual_memory().total / 2**30
    return f"{cores} cores, {memory:.0f} GiB, load average {load[0]:.1f} at start"
