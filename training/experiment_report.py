"""Markdown table and PNG plots of a cross-validated model comparison."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.cv import corrected_t_interval, paired_difference, t_interval  # noqa: E402

if TYPE_CHECKING:
    from training.experiment import ExperimentResult

logger = logging.getLogger(__name__)

REGRESSION_METRICS = ("r2", "rmse", "mae", "pearson")
BINARY_METRICS = ("roc_auc", "f1", "precision", "recall", "accuracy")


def _metric_values(result: ExperimentResult, model: str, metric: str) -> np.ndarray:
    return np.array([scores[metric] for scores in result.fold_metrics[model]], dtype=np.float64)


def _cell(values: np.ndarray) -> str:
    interval = t_interval(values)
    return f"{interval.mean:.3f} ± {interval.half_width:.3f}"


def render_table(result: ExperimentResult, baseline: str) -> str:
    """Return the markdown table: mean ± 95% t-interval half width per metric, and the paired difference."""
    metrics = BINARY_METRICS if result.task == "binary" else REGRESSION_METRICS
    primary = metrics[0]
    test_fraction = 1.0 / (len({fold.index for fold in result.folds}) - 1)  # n_test / n_train of K-fold
    header = ["model", *metrics, f"Δ{primary} vs {baseline} [95% CI]", "corrected CI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(result.fold_metrics, key=lambda name: -_metric_values(result, name, primary).mean())
    for model in order:
        cells = [model, *(_cell(_metric_values(result, model, metric)) for metric in metrics)]
        if baseline in result.fold_metrics and model != baseline:
            values = _metric_values(result, model, primary)
            reference = _metric_values(result, baseline, primary)
            plain = paired_difference(values, reference)
            corrected = paired_difference(values, reference, test_fraction=test_fraction)
            cells.append(f"{plain.mean:+.3f} [{plain.low:+.3f}, {plain.high:+.3f}]")
            cells.append(f"[{corrected.low:+.3f}, {corrected.high:+.3f}]")
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_missing_table(result: ExperimentResult) -> str:
    """Return a markdown table of the fusion heads' scores with one modality removed at prediction time.

    Each cell is the mean over folds of the primary metric, then the mean prediction minus the
    mean label (bias) in brackets: a model whose missing representation is calibrated keeps the
    bias near 0 when a modality is gone.
    """
    if not result.without:
        return ""
    primary = BINARY_METRICS[0] if result.task == "binary" else REGRESSION_METRICS[0]
    modalities = list(next(iter(result.without.values())))
    header = ["model", f"{primary} all present", *(f"{primary} without {m} [bias]" for m in modalities)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in sorted(result.without, key=lambda name: -_metric_values(result, name, primary).mean()):
        cells = [model, f"{_metric_values(result, model, primary).mean():.3f}"]
        for modality in modalities:
            predictions = result.without[model][modality]
            scores, biases = [], []
            for fold in result.folds:
                predicted = predictions[fold.repeat, fold.test]
                labels = result.labels[fold.test]
                scores.append(_primary_score(result.task, labels, predicted))
                biases.append(float(predicted.mean() - labels.mean()))
            cells.append(f"{np.mean(scores):.3f} [{np.mean(biases):+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _primary_score(task: str, labels: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import r2_score, roc_auc_score

    if task == "binary":
        return float(roc_auc_score(labels, predicted)) if len(np.unique(labels)) == 2 else float("nan")
    return float(r2_score(labels, predicted))


def plot_comparison(result: ExperimentResult, path: Path) -> None:
    """Draw each model's mean primary metric with its 95% t-interval as error bars."""
    primary = BINARY_METRICS[0] if result.task == "binary" else REGRESSION_METRICS[0]
    names = sorted(result.fold_metrics, key=lambda name: _metric_values(result, name, primary).mean())
    intervals = [t_interval(_metric_values(result, name, primary)) for name in names]
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    axes.barh(
        names, [interval.mean for interval in intervals],
        xerr=[interval.half_width for interval in intervals], capsize=4, color="#4c72b0",
    )
    axes.set_xlabel(f"{primary}, mean over folds with 95% t-interval")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_predictions(result: ExperimentResult, model: str, path: Path) -> None:
    """Draw out-of-fold predictions of the first repeat against the labels (regression) or ROC curve (binary)."""
    predicted = result.predictions[model][0]  # (N,)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    if result.task == "binary":
        from sklearn.metrics import roc_curve

        false_positive, true_positive, _ = roc_curve(result.labels, predicted)
        axes.plot(false_positive, true_positive)
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title(f"{model}: out-of-fold ROC curve")
    else:
        axes.scatter(result.labels, predicted, s=4, alpha=0.4)
        low, high = float(result.labels.min()), float(result.labels.max())
        axes.plot([low, high], [low, high], linestyle="--", color="grey")
        axes.set_xlabel("actual")
        axes.set_ylabel("predicted (out of fold)")
        axes.set_title(f"{model}: out-of-fold predictions")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_calibration(labels: np.ndarray, probability: np.ndarray, title: str, path: Path, *, bins: int = 10) -> None:
    """Draw a reliability diagram: mean predicted probability against the observed positive rate per quantile bin."""
    order = np.argsort(probability)
    groups = [group for group in np.array_split(order, bins) if group.size]
    predicted = [float(probability[group].mean()) for group in groups]
    observed = [float(labels[group].mean()) for group in groups]
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.plot(predicted, observed, marker="o")
    axes.set_xlabel("mean predicted probability (quantile bins)")
    axes.set_ylabel("observed positive rate")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(result: ExperimentResult, out: Path, context: dict[str, Any], *, baseline: str) -> str:
    """Write results.md and the plots (calibration too for binary tasks) into `out`; return the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    primary = BINARY_METRICS[0] if result.task == "binary" else REGRESSION_METRICS[0]
    best = max(result.fold_metrics, key=lambda name: _metric_values(result, name, primary).mean())
    plot_comparison(result, out / "comparison.png")
    plot_predictions(result, best, out / "predictions.png")
    plots = ["![comparison](comparison.png)", "![predictions](predictions.png)"]
    if result.task == "binary":
        plot_calibration(
            result.labels, result.predictions[best][0], f"{best}: out-of-fold calibration", out / "calibration.png"
        )
        plots.append("![calibration](calibration.png)")

    table = render_table(result, baseline)
    missing = render_missing_table(result)
    best_interval = corrected_t_interval(
        _metric_values(result, best, primary), test_fraction=1.0 / (context["folds"] - 1)
    )
    lines = [
        f"# {context['dataset']}: {context['folds']}-fold CV x {context['repeats']}",
        "",
        *(f"- {key}: {value}" for key, value in context.items() if key != "seconds"),
        "- seconds per model (all folds): "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in context["seconds"].items()),
        "",
        table,
        "",
        f"Best model by {primary}: {best}, {best_interval.mean:.3f} "
        f"(corrected 95% CI {best_interval.low:.3f} to {best_interval.high:.3f}).",
        "",
        *(["Fusion heads with one modality removed at prediction time:", "", missing, ""] if missing else []),
        " ".join(plots),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    return table
