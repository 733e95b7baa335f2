"""Cross-validated comparison of frozen and fine-tuned encoder embeddings on one run's stored features.

    python -m training.finetune_compare --run-dir runs/boardgames-full \\
        --catalogue ../shared/datasets/boardgames --modality image --folds 5 --out DIR

On each fold, every downstream model is fitted twice on the fold's training rows: once on the
run's stored (frozen) embeddings, and once on the embeddings of an encoder fine-tuned on those
rows only. One fine-tuned encoder per fold serves all downstream models. The held-out rows are
scored with the same metrics as `training.experiment`, and the report (results.md and
fold_metrics.json, rewritten after every fold) goes to --out. The summary table is also
written to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from encoders.image.backbones import get_image_backbone
from training.catalogue import load_catalogue
from training.cv import Fold, corrected_t_interval, make_folds, paired_difference
from training.experiment import MODELS, fold_scores
from training.experiment_data import ExperimentData, ExperimentDataError, load_experiment_data
from training.finetune import TextFineTuneConfig
from training.finetune_image import ImageFineTuneConfig, embed_from_trunk
from training.finetune_model import (
    fine_tune_image_on,
    fine_tune_on,
    image_keys,
    with_image_embeddings,
    with_text_embeddings,
)
from training.image_augment import load_resized_images
from training.image_network import SplitEfficientNetLite, load_pretrained

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text")


@dataclass
class _FineTuner:
    """How to fine-tune one modality's encoder on training rows and re-embed rows with it."""

    fine_tune: Callable[[ExperimentData], Any]  # training rows -> fine-tuning result
    re_embed: Callable[[ExperimentData, Any], ExperimentData]  # (rows, result) -> rows with new embeddings
    context: dict[str, Any]  # facts about the setup for the report


def _image_fine_tuner(data: ExperimentData, catalogue_dir: Path, config: ImageFineTuneConfig) -> _FineTuner:
    """Resize the catalogue's images once, and check that the trunk path reproduces the stored embeddings."""
    catalogue = load_catalogue(catalogue_dir, data.spec)
    product_ids = [str(product_id) for product_id in data.product_ids]
    paths = [
        catalogue.image_path(product_id) if product_id in catalogue.frame.index else None
        for product_id in product_ids
    ]
    started = time.perf_counter()
    trunk = config.trunk_features(
        load_resized_images(product_ids, paths, get_image_backbone(config.backbone))
    )
    resize_seconds = time.perf_counter() - started

    # The frozen network on the stored trunk outputs must give the stored embeddings. Otherwise the
    # comparison would compare two preprocessing paths instead of two sets of weights.
    started = time.perf_counter()
    keys, usable = image_keys(data, trunk)
    frozen = SplitEfficientNetLite(load_pretrained(trunk.spec), trunk.spec, config.trainable_blocks)
    recomputed = embed_from_trunk(frozen, trunk, keys)  # (K, 1280)
    difference = float(np.abs(recomputed - data.image[usable]).max())
    scale = float(np.abs(data.image[usable]).max())
    logger.info(
        "frozen trunk path vs stored image embeddings: max |difference| %.2g (max |value| %.2g)",
        difference,
        scale,
    )
    if difference > 1e-3 * scale:
        raise RuntimeError(
            f"image embeddings recomputed from the resized images differ from the stored ones by up to "
            f"{difference:.3g} (max |value| {scale:.3g}). The run was made with another backbone, weights "
            "or catalogue"
        )
    return _FineTuner(
        fine_tune=lambda train: fine_tune_image_on(train, trunk, config),
        re_embed=lambda rows, result: with_image_embeddings(rows, result, trunk),
        context={
            "resize_seconds": resize_seconds,
            "frozen_check_seconds": time.perf_counter() - started,
            "frozen_max_abs_difference": difference,
        },
    )


def _text_fine_tuner(config: TextFineTuneConfig) -> _FineTuner:
    return _FineTuner(
        fine_tune=lambda train: fine_tune_on(train, config),
        re_embed=lambda rows, result: with_text_embeddings(rows, result.encoder),
        context={},
    )


def compare_fold(
    data: ExperimentData, fold: Fold, models: list[str], tuner: _FineTuner, *, seed: int
) -> dict[str, Any]:
    """Score every model on one fold with the stored embeddings and with a fold-tuned encoder's."""
    record: dict[str, Any] = {"fold": fold.index, "frozen": {}, "fine_tuned": {}, "seconds": {}}
    held_out = data.labels[fold.test]

    def score(name: str, rows: ExperimentData, variant: str) -> None:
        started = time.perf_counter()
        model = MODELS[name](seed)
        model.fit(rows.take(fold.train))
        predicted = model.predict(rows.take(fold.test))
        record["seconds"][f"{name} {variant}"] = time.perf_counter() - started
        # NOTE: binary F1, precision and recall use threshold 0.5 here, not a tuned one.
        record[variant][name] = fold_scores(data.task, held_out, predicted, threshold=0.5)

    for name in models:
        score(name, data, "frozen")

    started = time.perf_counter()
    result = tuner.fine_tune(data.take(fold.train))
    record["seconds"]["fine_tune"] = time.perf_counter() - started
    started = time.perf_counter()
    tuned = tuner.re_embed(data, result)
    record["seconds"]["re_embed"] = time.perf_counter() - started
    record["best_epoch"] = result.best_epoch
    record["history"] = [asdict(epoch) for epoch in result.history]
    record["model_id"] = result.encoder.model_id

    for name in models:
        score(name, tuned, "fine_tuned")
    return record


def render_summary(records: list[dict[str, Any]], models: list[str], metric: str, folds: int) -> str:
    """Return a markdown table: per model the frozen and fine-tuned means and their paired difference."""
    lines = [
        f"| model | frozen {metric} | fine-tuned {metric} | Δ{metric} [95% t-interval] | corrected CI |",
        "|---|---|---|---|---|",
    ]
    for name in models:
        frozen = np.array([record["frozen"][name][metric] for record in records])
        tuned = np.array([record["fine_tuned"][name][metric] for record in records])
        if len(records) < 2:
            lines.append(
                f"| {name} | {frozen.mean():.4f} | {tuned.mean():.4f} "
                f"| {tuned.mean() - frozen.mean():+.4f} | |"
            )
            continue
        plain = paired_difference(tuned, frozen)
        corrected = corrected_t_interval(tuned - frozen, test_fraction=1.0 / (folds - 1))
        lines.append(
            f"| {name} | {frozen.mean():.4f} | {tuned.mean():.4f} | {plain.mean:+.4f} [{plain.low:+.4f}, "
            f"{plain.high:+.4f}] | [{corrected.low:+.4f}, {corrected.high:+.4f}] |"
        )
    lines += [
        "",
        "| fold | best epoch | fine-tune s | re-embed s | "
        + " | ".join(f"{name} frozen / fine-tuned" for name in models)
        + " |",
    ]
    lines.append("|---" * (4 + len(models)) + "|")
    for record in records:
        cells = [
            f"{record['frozen'][name][metric]:.4f} / {record['fine_tuned'][name][metric]:.4f}"
            for name in models
        ]
        lines.append(
            f"| {record['fold']} | {record['best_epoch']} | {record['seconds']['fine_tune']:.0f} | "
            f"{record['seconds']['re_embed']:.0f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.finetune_compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="folder of a finished run (contains features/)"
    )
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=None,
        help=(
            "catalogue folder with products.csv and the images. Required for --modality image, "
            "and for text the default is the run's"
        ),
    )
    parser.add_argument("--spec", default=None, help="spec name or YAML path (default: the run's)")
    parser.add_argument("--modality", choices=MODALITIES, required=True, help="encoder to fine-tune")

    parser.add_argument("--folds", type=int, default=5, help="number of folds of the split (default 5)")
    parser.add_argument("--fold-seed", type=int, default=0, help="seed of the fold split (default 0)")
    parser.add_argument(
        "--max-folds",
        type=int,
        default=None,
        help="score only the first N folds of the split, at least 2 (default: all)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help="downstream models (default: ridge_<modality> fusion_boosted)",
    )

    parser.add_argument(
        "--max-epochs", type=int, default=None, help="fine-tuning epochs at most (default: the config's)"
    )
    parser.add_argument(
        "--patience", type=int, default=None, help="early-stopping patience in epochs (default: the config's)"
    )
    parser.add_argument(
        "--augmented-views",
        type=int,
        default=None,
        help="image only: distinct augmented views per image, used in turn (default: one per epoch)",
    )
    parser.add_argument(
        "--trainable",
        type=int,
        default=None,
        help="last MBConv blocks (image) or transformer layers (text) to update (default: the config's)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use a random subset of this many products, for a quick check (default: all)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of fine-tuning and of the downstream models (default 0)"
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default: auto)")

    parser.add_argument("--out", type=Path, required=True, help="report folder")
    return parser


def _config(options: argparse.Namespace) -> ImageFineTuneConfig | TextFineTuneConfig:
    changes: dict[str, Any] = {"seed": options.seed, "device": options.device}
    if options.max_epochs is not None:
        changes["max_epochs"] = options.max_epochs
    if options.patience is not None:
        changes["patience"] = options.patience
    if options.modality == "image":
        if options.trainable is not None:
            changes["trainable_blocks"] = options.trainable
        changes["augmented_views"] = options.augmented_views
        return replace(ImageFineTuneConfig(), **changes)
    if options.trainable is not None:
        changes["trainable_layers"] = options.trainable
    if options.augmented_views is not None:
        raise ValueError("--augmented-views applies to --modality image only")
    return replace(TextFineTuneConfig(), **changes)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: load the data, compare frozen and fine-tuned embeddings fold by fold, write the report."""
    parser = _parser()
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if options.modality == "image" and options.catalogue is None:
        parser.error("--modality image needs --catalogue, the folder that contains the images")
    if options.max_folds is not None and not 2 <= options.max_folds <= options.folds:
        parser.error(f"--max-folds must be in 2..{options.folds}, got {options.max_folds}")
    try:
        config = _config(options)
        data = load_experiment_data(options.run_dir, catalogue_dir=options.catalogue, spec=options.spec)
    except (ExperimentDataError, ValueError) as error:
        parser.error(str(error))
    if options.limit is not None:
        if not 2 * options.folds <= options.limit <= len(data):
            parser.error(f"--limit must be in {2 * options.folds}..{len(data)}, got {options.limit}")
        subset = np.random.default_rng(options.seed).choice(len(data), size=options.limit, replace=False)
        data = data.take(np.sort(subset))
    models = options.models or [f"ridge_{options.modality}", "fusion_boosted"]
    metric = "roc_auc" if data.task == "binary" else "r2"
    started_at = datetime.now(UTC)

    started = time.perf_counter()
    if isinstance(config, ImageFineTuneConfig):
        tuner = _image_fine_tuner(data, options.catalogue, config)
    else:
        tuner = _text_fine_tuner(config)
    folds = make_folds(
        data.labels, folds=options.folds, seed=options.fold_seed, stratify=data.task == "binary"
    )
    folds = folds[: options.max_folds or options.folds]
    context = {
        "command": "python -m training.finetune_compare " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": data.spec.name,
        "products": len(data),
        "modality": options.modality,
        "folds": options.folds,
        "scored_folds": len(folds),
        "fold_seed": options.fold_seed,
        "config": {key: str(value) for key, value in asdict(config).items()},
        "date": started_at.isoformat(timespec="seconds"),
        "setup_seconds": time.perf_counter() - started,
        **tuner.context,
    }

    options.out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for fold in folds:
        fold_started = time.perf_counter()
        record = compare_fold(data, fold, models, tuner, seed=options.seed)
        record["seconds"]["fold"] = time.perf_counter() - fold_started
        records.append(record)
        logger.info(
            "fold %d done in %.0f s: %s",
            fold.index,
            record["seconds"]["fold"],
            {
                name: (round(record["frozen"][name][metric], 4), round(record["fine_tuned"][name][metric], 4))
                for name in models
            },
        )
        _write_report(options.out, context, records, models, metric)
    sys.stdout.write(render_summary(records, models, metric, options.folds) + "\n")


def _write_report(
    out: Path, context: dict[str, Any], records: list[dict[str, Any]], models: list[str], metric: str
) -> None:
    (out / "fold_metrics.json").write_text(
        json.dumps({"context": context, "folds": records}, indent=1), encoding="utf-8"
    )
    header = [
        f"# Frozen vs fine-tuned {context['modality']} embeddings on {context['dataset']}",
        "",
        f"`{context['command']}`",
        "",
        "",
    ]
    (out / "results.md").write_text(
        "\n".join(header) + render_summary(records, models, metric, context["folds"]) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
