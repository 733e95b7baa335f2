"""Plots of a main-job run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.report_plots import write_job_plots


def test_binary_run_gets_calibration_plot(tmp_path: Path):
    rng = np.random.default_rng(0)
    probability = rng.uniform(size=200)
    labels = (rng.uniform(size=200) < probability).astype(float)
    contributions = rng.normal(size=(200, 3))

    names = write_job_plots(tmp_path, "binary", "has_rating", labels, probability, contributions)

    assert names == ["calibration.png", "contributions.png"]
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in names)


def test_regression_run_gets_prediction_plot(tmp_path: Path):
    labels = np.linspace(1.0, 9.0, 50)

    names = write_job_plots(tmp_path, "regression", "avg_rating", labels, labels + 0.1, np.zeros((50, 3)))

    assert names == ["predictions.png", "contributions.png"]
    assert (tmp_path / "predictions.png").stat().st_size > 0
