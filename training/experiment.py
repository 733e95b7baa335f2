"""Cross-validated comparison of baselines, tree heads and fusion heads on one run's stored features.

    python -m training.experiment --run-dir runs/boardgames-full-2 --folds 5 --repeats 1 --out DIR

Every model is scored on the same folds. The report (results.md, plots, per-fold scores as JSON)
goes to --out, and the markdown table is also written to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn import metrics as sk_metrics

from training.baselines import (
    ExperimentModel,
    LightGBMOnAttributesTfidf,
    RidgeOnAttributes,
    RidgeOnEmbedding,
)
from training.boosted_head import BoostedHeadModel
from training.cv import Fold, make_folds
from training.experiment_data import ExperimentData, ExperimentDataError, load_experiment_data
from training.experiment_report import write_report
from training.metrics import classification_metrics, regression_metrics
from training.neural_heads import FusionHeadModel
from training.tree_heads import CatBoostHead, LightGBMHead, stack_out_of_fold

logger = logging.getLogger(__name__)

MODELS: dict[str, Callable[[int], ExperimentModel]] = {
    "ridge_text": lambda seed: RidgeOnEmbedding("text"),
    "ridge_image": lambda seed: RidgeOnEmbedding("image"),
    "ridge_attributes": lambda seed: RidgeOnAttributes(),
    "ridge_attributes_tfidf": lambda seed: RidgeOnAttributes(with_tfidf=True),
    "lightgbm_baseline": lambda seed: LightGBMOnAttributesTfidf(seed=seed),
    "lightgbm_head": lambda seed: LightGBMHead(seed=seed),
    "catboost_head": lambda seed: CatBoostHead(seed=seed),
    "fusion_boosted": lambda seed: BoostedHeadModel(seed=seed),
    "fusion_concat": lambda seed: FusionHeadModel("concat", seed=seed),
    "fusion_attention": lambda seed: FusionHeadModel("attention", seed=seed),
    "fusion_gated": lambda seed: FusionHeadModel("gated", seed=seed),
    "fusion_transformer": lambda seed: FusionHeadModel("transformer", seed=seed),
    # Needs a spec with auxiliary_labels (Flipkart), so it is not in the default model list.
    "fusion_concat_multitask": lambda seed: FusionHeadModel("concat", seed=seed, multitask=True),
}
NEEDS_AUXILIARY_LABELS = ("fusion_concat_multitask",)
DROPPED_MODALITIES = ("image", "text", "attributes")
STACK_NAME = "stack"  # ridge on the out-of-fold predictions of every other model evaluated
BASELINE_NAME = "lightgbm_baseline"


@dataclass
class ExperimentResult:
    """Per-fold metrics and out-of-fold predictions of every model, on shared folds."""

    task: str
    folds: list[Fold]
    labels: np.ndarray  # (N,)
    fold_metrics: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # model -> one per fold
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (repeats, N)
    seconds: dict[str, float] = field(default_factory=dict)
    # Fusion heads only: model -> removed modality -> (repeats, N) predictions with that modality missing.
    without: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def fold_scores(task: str, labels: np.ndarray, predicted: np.ndarray, threshold: float) -> dict[str, float]:
    """Return the metrics of one held-out fold; `threshold` applies to binary probabilities only."""
    if task != "binary":
        return regression_metrics(labels, predicted)
    scores = classification_metrics(labels, predicted, threshold=threshold)
    decided = (predicted >= threshold).astype(np.int64)
    scores["precision"] = float(sk_metrics.precision_score(labels, decided, zero_division=0.0))
    scores["recall"] = float(sk_metrics.recall_score(labels, decided, zero_division=0.0))
    scores["threshold"] = threshold
    return scores


def best_f1_threshold(labels: np.ndarray, probability: np.ndarray) -> float:
    """Return the probability threshold with the highest F1 on (labels, probability)."""
    precision, recall, thresholds = sk_metrics.precision_recall_curve(labels, probability)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def evaluate_models(data: ExperimentData, names: list[str], folds: list[Fold], *, seed: int = 0) -> ExperimentResult:
    """Fit each named model on every fold's training rows and score it on the held-out rows."""
    repeats = max(fold.repeat for fold in folds) + 1
    result = ExperimentResult(task=data.task, folds=folds, labels=data.labels)
    base_names = [name for name in names if name != STACK_NAME]
    for name in base_names:
        started = time.perf_counter()
        predictions = np.full((repeats, len(data)), np.nan)
        check_missing = name.startswith("fusion_")
        without = {modality: np.full((repeats, len(data)), np.nan) for modality in DROPPED_MODALITIES}
        for fold in folds:
            model = MODELS[name](seed + fold.repeat)
            model.fit(data.take(fold.train))
            held_out = data.take(fold.test)
            predictions[fold.repeat, fold.test] = model.predict(held_out)
            if check_missing:
                for modality in DROPPED_MODALITIES:
                    without[modality][fold.repeat, fold.test] = model.predict(held_out.without(modality))
            logger.info("%s: repeat %d fold %d done", name, fold.repeat, fold.index)
        result.predictions[name] = predictions
        if check_missing:
            result.without[name] = without
        result.seconds[name] = time.perf_counter() - started
        logger.info("%s: %d folds in %.1f s", name, len(folds), result.seconds[name])

    if STACK_NAME in names:
        if len(base_names) < 2:
            raise ValueError(f"the {STACK_NAME} model needs at least two other models, got {base_names}")
        started = time.perf_counter()
        stacked_inputs = {name: result.predictions[name] for name in base_names}
        result.predictions[STACK_NAME] = stack_out_of_fold(stacked_inputs, data.labels, folds, data.task)
        result.seconds[STACK_NAME] = time.perf_counter() - started

    # Binary thresholds come from the other folds' out-of-fold predictions, never from the scored fold.
    for name, predictions in result.predictions.items():
        scores = []
        for fold in folds:
            threshold = 0.5
            if data.task == "binary":
                threshold = best_f1_threshold(data.labels[fold.train], predictions[fold.repeat, fold.train])
            scores.append(fold_scores(data.task, data.labels[fold.test], predictions[fold.repeat, fold.test], threshold))
        result.fold_metrics[name] = scores
    return result


def _machine_description() -> str:
    """Return the CPU model, the number of cores this process may use and the OS, for the report."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.system()} {platform.release()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="folder of a finished run (contains features/)")
    parser.add_argument("--catalogue", type=Path, default=None, help="catalogue folder (default: the run's)")
    parser.add_argument("--spec", default=None, help="spec name or YAML path (default: the run's)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds per repeat (default 5)")
    parser.add_argument("--repeats", type=int, default=1, help="number of K-fold repetitions (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of repetition 0; repetition r uses seed+r")
    parser.add_argument(
        "--models", nargs="+", default=[name for name in [*MODELS, STACK_NAME] if name not in NEEDS_AUXILIARY_LABELS],
        choices=[*MODELS, STACK_NAME],
        help="models to evaluate (default: all but fusion_concat_multitask, which needs auxiliary labels)",
    )
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUN_DIR/experiments/<UTC time>)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: load the data, evaluate the models on shared folds and write the report."""
    options = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = datetime.now(timezone.utc)
    out = options.out or options.run_dir / "experiments" / started.strftime("%Y%m%dT%H%M%SZ")

    try:
        data = load_experiment_data(options.run_dir, catalogue_dir=options.catalogue, spec=options.spec)
    except ExperimentDataError as error:
        _parser().error(str(error))
    folds = make_folds(
        data.labels, folds=options.folds, repeats=options.repeats, seed=options.seed,
        stratify=data.task == "binary",
    )
    result = evaluate_models(data, list(options.models), folds, seed=options.seed)

    context = {
        "command": "python -m training.experiment " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": data.spec.name,
        "products": len(data),
        "label": data.spec.label_column,
        "task": data.task,
        "folds": options.folds,
        "repeats": options.repeats,
        "fold_seeds": sorted({fold.seed for fold in folds}),
        "machine": _machine_description(),
        "date": started.isoformat(timespec="seconds"),
        "seconds": result.seconds,
    }
    table = write_report(result, out, context, baseline=BASELINE_NAME)
    (out / "fold_metrics.json").write_text(
        json.dumps({"context": context, "fold_metrics": result.fold_metrics}, indent=1), encoding="utf-8"
    )
    sys.stdout.write(table + "\n")
    logger.info("report written to %s", out)


if __name__ == "__main__":
    main()
