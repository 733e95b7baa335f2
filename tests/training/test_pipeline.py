"""End-to-end runs of the main job: features, training, three service processes, gRPC scoring."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

from benchmarks._predictor import ensure_run
from benchmarks.load_test import run_load_test
from training.catalogue import default_datasets_dir
from training.experiment_data import load_experiment_data
from training.pipeline import main, parse_options, run_job

pytestmark = pytest.mark.slow

BOARDGAMES = default_datasets_dir() / "boardgames"


def _delete_project_keys(project: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    # Feast's Redis keys end with the project name after the serialized entity key.
    for key in client.scan_iter(match=f"*{project}*", count=1000):
        client.delete(key)


def test_sample_job_with_sqlite(tmp_path: Path) -> None:
    options = parse_options(
        ["--runs-dir", str(tmp_path), "--run-name", "sample", "--epochs", "60", "--no-progress"]
    )

    report = run_job(options)

    assert report.served_matches_reference
    assert report.max_abs_difference["by product id"] <= 1e-5
    assert "by inline content" in report.max_abs_difference
    assert report.metrics["predictor over gRPC (by product id)"]["r2"] > 0.3
    assert report.service_exit_statuses == {"fusion predictor": 0, "text encoder": 0, "image encoder": 0}
    assert (tmp_path / "sample" / "report.md").is_file()
    assert report.plots == ["predictions.png", "contributions.png"]
    assert all((tmp_path / "sample" / name).stat().st_size > 0 for name in report.plots)
    assert set(report.training["trees"]) == {"lightgbm", "catboost"}
    assert "PQ_PREDICTOR_MODEL_PATH=" in (tmp_path / "sample" / "serve.env").read_text()
    assert (tmp_path / "latest").resolve() == (tmp_path / "sample").resolve()
    written = json.loads((tmp_path / "sample" / "metrics.json").read_text())
    assert set(written["stage_seconds"]) == {
        "catalogue", "embed", "features", "train", "evaluate", "serve_and_score",
    }
    # The generated catalogue is recorded, so experiments on this run need no --catalogue.
    assert len(load_experiment_data(tmp_path / "sample")) == sum(written["split_sizes"].values())

    # A short load test of the run's stack: every call of every kind is served, and each
    # service stops cleanly after it.
    load = run_load_test(
        ensure_run(tmp_path / "sample", require_redis=False), clients=4, duration_s=6.0, log_dir=tmp_path / "load"
    )
    assert load.errors == 0, {kind: dict(stats.errors) for kind, stats in load.stats.items()}
    assert all(len(stats.latencies_s) > 0 for stats in load.stats.values())
    assert load.exit_statuses == {"fusion predictor": 0, "text encoder": 0, "image encoder": 0}


@pytest.mark.skipif(not BOARDGAMES.is_dir(), reason=f"board games dataset not found at {BOARDGAMES}")
def test_boardgames_job_with_redis(tmp_path: Path) -> None:
    project = f"pqtest_{uuid.uuid4().hex[:10]}"
    try:
        status = main(
            [
                "--catalogue", str(BOARDGAMES),
                "--limit", "300",
                "--online-store", "redis",
                "--redis", "127.0.0.1:6379",
                "--feast-project", project,
                "--runs-dir", str(tmp_path),
                "--run-name", "boardgames",
                "--inline-products", "4",
                "--fusion-head", "concat",
                "--no-progress",
            ]
        )
    finally:
        _delete_project_keys(project)

    assert status == 0
    written = json.loads((tmp_path / "boardgames" / "metrics.json").read_text())
    assert written["max_abs_difference"]["by product id"] <= 1e-5
    assert written["metrics"]["predictor over gRPC (by product id)"]["r2"] > 0.0
    assert written["split_sizes"]["test"] == 45
    assert written["training"]["epochs_run"] >= 1
