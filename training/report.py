"""The main job's report: metrics of in-process and served predictions, timings, and where they went."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion.inference import FusionPredictions
from training.catalogue import Catalogue
from training.report_plots import write_job_plots
from training.stages import ServedScores, evaluation_metrics

logger = logging.getLogger(__name__)

# Largest difference allowed between a prediction served by product id and the in-process
# prediction of the same stored features: both run the same float32 model on the same vectors.
SERVED_TOLERANCE = 1e-5
# Inline content is embedded again by the encoder services, one product per call, so float32
# rounding in the batched encoders may differ slightly from the batch embedding of the catalogue.
INLINE_TOLERANCE = 1e-3


@dataclass
class JobReport:
    """Everything the main job measured, ready to print and to write as markdown and JSON."""

    run_dir: Path
    dataset: str
    label: str
    task: str
    model_version: str
    products: int
    products_without_image: int
    split_sizes: dict[str, int]
    metrics: dict[str, dict[str, float]]  # row name -> metric -> value
    max_abs_difference: dict[str, float]  # served path -> max |served - in-process|
    mean_contributions: dict[str, float]
    plots: list[str]  # PNG file names in the run folder
    stage_seconds: dict[str, float]
    training: dict[str, Any]
    settings: dict[str, str | None]
    service_exit_statuses: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        run_dir: Path,
        options: dict[str, str | None],
        catalogue: Catalogue,
        split_sizes: dict[str, int],
        labels: np.ndarray,
        reference: FusionPredictions,
        served: ServedScores,
        training: dict[str, Any],
        stage_seconds: dict[str, float],
        model_version: str,
        feast_project: str,
        online_store: str,
        image_model_id: str,
        text_model_id: str,
    ) -> JobReport:
        """Compute the test metrics and differences, write the plots into `run_dir`, and collect the rest."""
        task = catalogue.spec.task
        metrics = {
            "in-process model": evaluation_metrics(task, labels, reference.quality),
            "predictor over gRPC (by product id)": evaluation_metrics(task, labels, served.by_id.quality),
        }
        differences = {"by product id": float(np.max(np.abs(served.by_id.quality - reference.quality)))}
        if served.inline is not None:
            positions = np.array(served.inline_positions)
            differences["by inline content"] = float(
                np.max(np.abs(served.inline.quality - reference.quality[positions]))
            )
        contributions = served.by_id.contributions.mean(axis=0)
        plots = write_job_plots(run_dir, task, catalogue.spec.label_column, labels, served.by_id.quality, served.by_id.contributions)
        return cls(
            run_dir=run_dir,
            dataset=catalogue.spec.name,
            label=catalogue.spec.label_column,
            task=task,
            model_version=model_version,
            products=len(catalogue),
            products_without_image=catalogue.missing_image_count,
            split_sizes=split_sizes,
            metrics=metrics,
            max_abs_difference=differences,
            plots=plots,
            mean_contributions={
                "image": float(contributions[0]),
                "text": float(contributions[1]),
                "attributes": float(contributions[2]),
            },
            stage_seconds=dict(stage_seconds),
            training=dict(training),
            settings={
                **options,
                "feast_project": feast_project,
                "online_store": online_store,
                "image_model_id": image_model_id,
                "text_model_id": text_model_id,
            },
            service_exit_statuses=served.exit_statuses,
        )

    @property
    def served_matches_reference(self) -> bool:
        """True when every served prediction equals the in-process one within its tolerance."""
        by_id_ok = self.max_abs_difference["by product id"] <= SERVED_TOLERANCE
        inline_ok = self.max_abs_difference.get("by inline content", 0.0) <= INLINE_TOLERANCE
        return by_id_ok and inline_ok

    def training_summary(self) -> str:
        """Return one sentence on training: epochs for a neural head, trees per member for the boosted one."""
        seconds = f"{self.training['seconds']:.1f} s"
        if "trees" in self.training:
            trees = ", ".join(f"{name} {count} trees" for name, count in self.training["trees"].items())
            return f"Boosted head: {trees}; {seconds}."
        return (
            f"{self.training['epochs_run']} epochs, best epoch {self.training['best_epoch']} "
            f"(validation loss {self.training['best_validation_loss']:.4f}), {seconds}."
        )

    def metrics_table(self) -> str:
        """Return the test-split metrics as a markdown table, one row per prediction path."""
        names = list(next(iter(self.metrics.values())))
        lines = [
            "| predictions | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for row, values in self.metrics.items():
            lines.append(f"| {row} | " + " | ".join(f"{values[name]:.4f}" for name in names) + " |")
        return "\n".join(lines)

    def timings_table(self) -> str:
        """Return the wall time of each stage as a markdown table."""
        lines = ["| stage | wall time (s) |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in self.stage_seconds.items()]
        lines.append(f"| total | {sum(self.stage_seconds.values()):.1f} |")
        return "\n".join(lines)

    def console_summary(self) -> str:
        """Return the summary printed at the end of the job."""
        differences = ", ".join(f"{path}: {value:.2e}" for path, value in self.max_abs_difference.items())
        verdict = "match" if self.served_matches_reference else "DO NOT MATCH"
        return "\n".join(
            [
                "",
                f"Test split of {self.dataset} ({self.split_sizes['test']} products), label {self.label}:",
                self.metrics_table(),
                "",
                f"Served predictions {verdict} the in-process model (max |difference| {differences}).",
                "",
                self.timings_table(),
                "",
                f"Report: {self.run_dir / 'report.md'}",
            ]
        )

    def to_markdown(self) -> str:
        """Return the report as a markdown document."""
        settings = "\n".join(f"- `{key}`: `{value}`" for key, value in sorted(self.settings.items()))
        contributions = ", ".join(f"{name} {value:+.4f}" for name, value in self.mean_contributions.items())
        differences = "\n".join(
            f"- {path}: {value:.3e}" for path, value in self.max_abs_difference.items()
        )
        return "\n".join(
            [
                f"# Run {self.run_dir.name}",
                "",
                f"Dataset `{self.dataset}`: {self.products} products ({self.products_without_image} without "
                f"an image), split {self.split_sizes['train']} train / {self.split_sizes['validation']} "
                f"validation / {self.split_sizes['test']} test. Label `{self.label}` ({self.task}). "
                f"Model version `{self.model_version}`.",
                "",
                "## Test-split metrics",
                "",
                self.metrics_table(),
                "",
                "Largest absolute difference between served and in-process predictions:",
                "",
                differences,
                "",
                f"Mean modality contribution over the test split (label units): {contributions}.",
                "",
                " ".join(f"![{Path(name).stem}]({name})" for name in self.plots),
                "",
                "## Training",
                "",
                self.training_summary(),
                "",
                "## Stage wall times",
                "",
                self.timings_table(),
                "",
                "## Settings",
                "",
                settings,
                "",
            ]
        )


def write_report(report: JobReport) -> Path:
    """Write report.md and metrics.json into the run folder and point `<runs>/latest` at it."""
    report.run_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = report.run_dir / "report.md"
    markdown_path.write_text(report.to_markdown(), encoding="utf-8")
    document = {
        "dataset": report.dataset,
        "label": report.label,
        "task": report.task,
        "model_version": report.model_version,
        "split_sizes": report.split_sizes,
        "metrics": report.metrics,
        "max_abs_difference": report.max_abs_difference,
        "mean_contributions": report.mean_contributions,
        "stage_seconds": report.stage_seconds,
        "training": report.training,
        "settings": report.settings,
        "service_exit_statuses": report.service_exit_statuses,
    }
    (report.run_dir / "metrics.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    latest = report.run_dir.parent / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(report.run_dir.name)
    else:
        logger.warning("%s exists and is not a link; leaving it as it is", latest)
    logger.info("wrote %s", markdown_path)
    return markdown_path
