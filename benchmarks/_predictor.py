"""Shared set-up of the predictor benchmarks: a main-job run served from Redis, and its test products."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import REPO_ROOT

DEFAULT_RUN = REPO_ROOT / "runs" / "bench-sample"


@dataclass(frozen=True)
class ServedRun:
    """A main-job run whose checkpoint is served with features in Redis."""

    run_dir: Path
    environment: dict[str, str]  # the PQ_* settings of serve.env
    product_ids: list[str]  # every product stored by the run, in offline-file order
    catalogue: Path | None  # the run's catalogue folder, when its metrics.json records one
    spec: str | None  # the spec name or path the run used


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the NAME=VALUE lines (shell-quoted values) of a run's serve.env."""
    environment = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        words = shlex.split(value)
        environment[name] = words[0] if words else ""
    return environment


def ensure_run(run_dir: Path, *, require_redis: bool = True) -> ServedRun:
    """Return the run at `run_dir`; when it does not exist, run the main job on a sample catalogue.

    With `require_redis` the run must use the Redis online store, which the predictor reads in one
    round trip; a run with the SQLite store is refused.
    """
    if not (run_dir / "serve.env").is_file():
        print(f"# {run_dir} has no serve.env; running the main job on a sample catalogue into it", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.pipeline",
                "--online-store",
                "redis",
                "--runs-dir",
                str(run_dir.parent),
                "--run-name",
                run_dir.name,
                "--feast-project",
                f"pq_{run_dir.name.replace('-', '_')}",
                "--no-progress",
            ],
            cwd=REPO_ROOT,
            check=True,
        )
    environment = read_env_file(run_dir / "serve.env")
    if require_redis and environment.get("PQ_ONLINE_STORE") != "redis":
        raise SystemExit(
            f"{run_dir} serves features from {environment.get('PQ_ONLINE_STORE')!r}; use a run made with --online-store redis"
        )
    import pandas as pd

    attributes = Path(environment["PQ_FEATURE_DATA_DIR"]) / "product_attributes.parquet"
    product_ids = pd.read_parquet(attributes, columns=["product_id"])["product_id"].astype(str).tolist()
    catalogue, spec = _recorded_catalogue(run_dir)
    return ServedRun(run_dir, environment, product_ids, catalogue, spec)


def _recorded_catalogue(run_dir: Path) -> tuple[Path | None, str | None]:
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None, None
    recorded = json.loads(metrics.read_text(encoding="utf-8"))
    settings = recorded.get("settings", {})
    folder = settings.get("catalogue")
    spec = settings.get("spec") or recorded.get("dataset")
    # The main job runs from the repository root, so a relative folder is relative to it.
    return (REPO_ROOT / folder if isinstance(folder, str) else None), (
        spec if isinstance(spec, str) else None
    )
