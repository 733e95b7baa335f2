"""Bounded, reproducible search over the boosted head's hyperparameters on cross-validation folds.

    python -m training.search --run-dir runs/boardgames-full --budget-minutes 40 --out DIR

Candidates are drawn by a seeded generator from SEARCH_SPACE around the --base-config settings
(candidate 0 is the base unchanged) and scored on the same folds as training.experiment. The search stops starting
new candidates when the time budget is spent. Every candidate's config and fold scores go to
DIR/search.json, and the best config to DIR/best.yaml, which the main job reads with
`--boosted-config`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fusion.boosted.config import BoostedConfig
from training.boosted_head import BoostedHeadModel
from training.cv import make_folds
from training.experiment import evaluate_models, MODELS
from training.experiment_data import ExperimentDataError, load_experiment_data

logger = logging.getLogger(__name__)

DEFAULT_BASE_CONFIG = Path(__file__).resolve().parent / "hyperparameters" / "boosted.yaml"

# Setting path -> values tried. A dotted path sets a member's setting.
SEARCH_SPACE: dict[str, list[Any]] = {
    "lightgbm.learning_rate": [0.005, 0.01, 0.02],
    "lightgbm.num_leaves": [7, 15, 31],
    "lightgbm.feature_fraction": [0.3, 0.5, 0.8],
    "catboost.learning_rate": [0.02, 0.03, 0.05],
    "catboost.depth": [4, 6, 8],
    "catboost.l2_leaf_reg": [1.0, 3.0, 10.0],
    "modality_dropout": [0.0, 0.1, 0.2],
    "text_knn_neighbours": [[5, 20], [5, 20, 50], [10]],
    "image_knn_neighbours": [[], [10]],
}


def candidate(base: dict[str, Any], changes: dict[str, Any]) -> BoostedConfig:
    """Return `base` (BoostedConfig.to_dict output) with the dotted-path `changes` applied."""
    data = json.loads(json.dumps(base))
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return BoostedConfig.from_dict(data)


def draw_changes(rng: np.random.Generator, changes_per_candidate: int) -> dict[str, Any]:
    """Draw `changes_per_candidate` settings from SEARCH_SPACE and a value for each."""
    names = sorted(SEARCH_SPACE)
    chosen = rng.choice(len(names), size=changes_per_candidate, replace=False)
    return {names[i]: SEARCH_SPACE[names[i]][int(rng.integers(len(SEARCH_SPACE[names[i]])))] for i in sorted(chosen)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.search", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="folder of a finished run (contains features/)")
    parser.add_argument("--catalogue", type=Path, default=None, help="catalogue folder (default: the run's)")
    parser.add_argument("--spec", default=None, help="spec name or YAML path (default: the run's)")
    parser.add_argument(
        "--base-config", type=Path, default=DEFAULT_BASE_CONFIG,
        help="YAML settings the candidates change (candidate 0 is this file unchanged)",
    )
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="no candidate starts after this (default 30)")
    parser.add_argument("--max-candidates", type=int, default=50, help="at most this many candidates (default 50)")
    parser.add_argument("--changes", type=int, default=2, help="settings changed per candidate (default 2)")
    parser.add_argument("--folds", type=int, default=5, help="folds per candidate (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, the models and the draws")
    parser.add_argument("--out", type=Path, required=True, help="folder for search.json and best.yaml")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        data = load_experiment_data(options.run_dir, catalogue_dir=options.catalogue, spec=options.spec)
    except ExperimentDataError as error:
        parser.error(str(error))
    folds = make_folds(data.labels, folds=options.folds, repeats=1, seed=options.seed, stratify=data.task == "binary")
    base = BoostedConfig.from_yaml(options.base_config).to_dict()
    rng = np.random.default_rng(options.seed)
    deadline = time.monotonic() + 60.0 * options.budget_minutes
    records: list[dict[str, Any]] = []
    options.out.mkdir(parents=True, exist_ok=True)
    metric = "roc_auc" if data.task == "binary" else "r2"

    for index in range(options.max_candidates):
        if time.monotonic() >= deadline:
            logger.info("time budget spent after %d candidates", index)
            break
        changes = {} if index == 0 else draw_changes(rng, options.changes)
        config = candidate(base, changes)
        name = f"candidate_{index}"
        MODELS[name] = lambda seed, config=config: BoostedHeadModel(config, seed=seed)
        started = time.perf_counter()
        result = evaluate_models(data, [name], folds, seed=options.seed)
        scores = [fold[metric] for fold in result.fold_metrics[name]]
        records.append({
            "candidate": index, "changes": changes, "config": config.to_dict(), metric: float(np.mean(scores)),
            "fold_scores": scores, "seconds": time.perf_counter() - started,
        })
        logger.info("%s %s: %s %.4f", name, changes, metric, np.mean(scores))
        (options.out / "search.json").write_text(json.dumps(records, indent=1), encoding="utf-8")

    best = max(records, key=lambda record: record[metric])
    (options.out / "best.yaml").write_text(yaml.safe_dump(best["config"], sort_keys=False), encoding="utf-8")
    logger.info("best: candidate %d %s with %s %.4f", best["candidate"], best["changes"], metric, best[metric])


if __name__ == "__main__":
    main()
