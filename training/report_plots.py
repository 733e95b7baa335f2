"""PNG plots of a main-job run: predictions against labels (or calibration) and modality contributions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.experiment_report import plot_calibration  # noqa: E402

MODALITY_NAMES = ("image", "text", "attributes")


def plot_predicted_vs_actual(labels: np.ndarray, predicted: np.ndarray, label: str, path: Path) -> None:
    """Scatter the served test predictions against the labels, with the identity line."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.scatter(labels, predicted, s=6, alpha=0.5)
    low, high = float(np.min(labels)), float(np.max(labels))
    axes.plot([low, high], [low, high], linestyle="--", color="grey")
    axes.set_xlabel(f"actual {label}")
    axes.set_ylabel(f"predicted {label} (served)")
    axes.set_title("test split: served predictions")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_contributions(contributions: np.ndarray, label: str, path: Path) -> None:
    """Draw the mean absolute and the mean signed Shapley contribution (B, 3) of each modality."""
    mean_absolute = np.abs(contributions).mean(axis=0)
    mean_signed = contributions.mean(axis=0)
    positions = np.arange(len(MODALITY_NAMES))
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.bar(positions - 0.2, mean_absolute, width=0.4, label="mean |contribution|")
    axes.bar(positions + 0.2, mean_signed, width=0.4, label="mean contribution")
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xticks(positions, MODALITY_NAMES)
    axes.set_ylabel(f"{label} units")
    axes.set_title("test split: Shapley contributions per modality")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_job_plots(
    run_dir: Path, task: str, label: str, labels: np.ndarray, predicted: np.ndarray, contributions: np.ndarray
) -> list[str]:
    """Write the run's plots into `run_dir` and return their file names."""
    names = []
    if task == "binary":
        plot_calibration(labels, predicted, f"test split: served P({label})", run_dir / "calibration.png")
        names.append("calibration.png")
    else:
        plot_predicted_vs_actual(labels, predicted, label, run_dir / "predictions.png")
        names.append("predictions.png")
    plot_contributions(contributions, label, run_dir / "contributions.png")
    names.append("contributions.png")
    return names
