"""The main job: catalogue -> embeddings -> Feast features -> fusion model -> served predictions.

Run it with `python -m training.pipeline` (or `./run.sh`). With no options it generates a small
sample catalogue and uses the embedded SQLite online store. `--catalogue DIR --online-store redis`
runs the same stages on a real catalogue with Redis. See `--help`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import cast
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from encoders.image.backbones import DEFAULT_IMAGE_BACKBONE, IMAGE_BACKBONES
from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, TEXT_BACKBONES
from fusion.boosted.config import BoostedConfig, BoostedConfigError
from fusion.model import FUSION_HEADS, FusionHead
from training.catalogue import Catalogue, load_catalogue
from training.report import JobReport, write_report
from training.spec import builtin_spec_names, load_spec
from training.stages import (
    EmbeddedCatalogue,
    compute_embeddings,
    predict_in_process,
    publish_features,
    score_through_services,
    train_and_save,
    train_and_save_boosted,
    write_serving_environment,
)
from training.timing import StageTimer

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOSTED_HEAD = "boosted"
DEFAULT_FUSION_HEAD = BOOSTED_HEAD
DEFAULT_BOOSTED_CONFIG = REPO_ROOT / "training" / "hyperparameters" / "boosted.yaml"
SAMPLE_PRODUCTS = 400


@dataclass(frozen=True)
class JobOptions:
    """Options of one main-job run; see `build_parser` for what each sets."""

    catalogue: Path | None
    spec: str | None
    limit: int | None
    online_store: str
    redis_connection_string: str
    feast_project: str | None
    runs_dir: Path
    run_name: str | None
    image_backbone: str
    text_backbone: str
    device: str
    seed: int
    epochs: int
    inline_products: int
    progress: bool | None
    fusion_head: str = DEFAULT_FUSION_HEAD
    boosted_config: Path = DEFAULT_BOOSTED_CONFIG
    auxiliary_labels: bool = True


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to option help, except where the default is None and the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.pipeline",
        formatter_class=_DefaultsHelpFormatter,
        description=(
            "Build a catalogue's features, train a fusion model, serve it with the three gRPC "
            "services and score held-out products through the predictor."
        ),
    )
    parser.add_argument(
        "--catalogue", type=Path, default=None,
        help="catalogue folder with products.csv and images/ (default: generate a sample catalogue)",
    )
    parser.add_argument(
        "--spec", default=None,
        help=f"dataset spec: a built-in name ({', '.join(builtin_spec_names())}) or a YAML path "
        "(default: the built-in spec named like the catalogue folder, or 'sample')",
    )
    parser.add_argument("--limit", type=int, default=None, help="use a random subset of this many products")

    parser.add_argument(
        "--online-store", choices=["sqlite", "redis"], default="sqlite",
        help="Feast online store: sqlite is embedded and needs no server",
    )
    parser.add_argument(
        "--redis", dest="redis_connection_string", default="127.0.0.1:6379",
        help="Redis address in Feast's format host:port[,db=N,password=...]",
    )
    parser.add_argument(
        "--feast-project", default=None,
        help="Feast project name, which scopes the Redis keys (default: pq_<dataset name>)",
    )

    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs", help="parent folder of run folders")
    parser.add_argument("--run-name", default=None, help="run folder name (default: <dataset>-<UTC time>)")

    parser.add_argument(
        "--image-backbone", default=DEFAULT_IMAGE_BACKBONE, choices=sorted(IMAGE_BACKBONES),
        help="image encoder backbone",
    )
    parser.add_argument(
        "--text-backbone", default=DEFAULT_TEXT_BACKBONE, choices=sorted(TEXT_BACKBONES),
        help="text encoder backbone",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda")

    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the sample and training")
    parser.add_argument(
        "--epochs", type=int, default=200, help="maximum training epochs of a neural head (early stopping)"
    )
    parser.add_argument(
        "--fusion-head", choices=[BOOSTED_HEAD, *FUSION_HEADS], default=DEFAULT_FUSION_HEAD,
        help="how the model fuses image, text and attributes: boosted trees on embedding projections "
        "(the best in cross-validation, docs/results.md) or a neural fusion head",
    )
    parser.add_argument(
        "--boosted-config", type=Path, default=DEFAULT_BOOSTED_CONFIG,
        help="YAML hyperparameters of the boosted head (fusion/boosted/config.py)",
    )
    parser.add_argument(
        "--auxiliary-labels", action=argparse.BooleanOptionalAction, default=True,
        help="also train a neural fusion head on the spec's auxiliary labels, each masked where a "
        "product has no value. The boosted head never uses them",
    )
    parser.add_argument(
        "--inline-products", type=int, default=8,
        help="held-out products also scored by inline content, through the encoder services",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help="hide progress bars")
    return parser


def parse_options(argv: list[str] | None = None) -> JobOptions:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 20:
        build_parser().error(f"--limit must be at least 20 products to split train/validation/test, got {args.limit}")
    if args.inline_products < 0:
        build_parser().error(f"--inline-products must not be negative, got {args.inline_products}")
    if args.fusion_head == BOOSTED_HEAD:
        try:
            BoostedConfig.from_yaml(args.boosted_config)
        except BoostedConfigError as error:
            build_parser().error(f"--boosted-config: {error}")
    return JobOptions(**vars(args))


def _resolve_spec_name(options: JobOptions) -> str:
    if options.spec is not None:
        return options.spec
    if options.catalogue is None:
        return "sample"
    if not (options.catalogue / "products.csv").is_file():
        raise SystemExit(
            f"catalogue folder {options.catalogue} has no products.csv; pass a folder with products.csv "
            "and the images it names"
        )
    folder_name = options.catalogue.resolve().name
    if folder_name in builtin_spec_names():
        return folder_name
    raise SystemExit(
        f"no built-in spec is named {folder_name!r} after the catalogue folder; pass --spec with a "
        f"built-in name ({', '.join(builtin_spec_names())}) or the path of a spec YAML"
    )


def prepare_catalogue(options: JobOptions, run_dir: Path) -> Catalogue:
    """Load the given catalogue, or generate the sample catalogue into the run folder."""
    spec = load_spec(_resolve_spec_name(options))
    if options.catalogue is None:
        from training.sample import generate_sample_catalogue

        root = generate_sample_catalogue(run_dir / "catalogue", n_products=SAMPLE_PRODUCTS, seed=options.seed)
    else:
        root = options.catalogue
    return load_catalogue(root, spec, limit=options.limit, seed=options.seed)


def run_job(options: JobOptions) -> JobReport:
    """Run every stage and return the report (also written into the run folder)."""
    timer = StageTimer()
    started_at = datetime.now(UTC)
    boosted_config = BoostedConfig.from_yaml(options.boosted_config) if options.fusion_head == BOOSTED_HEAD else None

    with timer.stage("catalogue"):
        spec_name = _resolve_spec_name(options)
        run_name = options.run_name or f"{spec_name}-{started_at:%Y%m%dT%H%M%S}"
        run_dir = (options.runs_dir / run_name).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        catalogue = prepare_catalogue(options, run_dir)
        split = catalogue.split(seed=options.seed)
        logger.info(
            "catalogue %s: %d products (%d without an image), split %d/%d/%d",
            catalogue.spec.name, len(catalogue), catalogue.missing_image_count,
            len(split.train), len(split.validation), len(split.test),
        )

    with timer.stage("embed"):
        embedded: EmbeddedCatalogue = compute_embeddings(
            catalogue,
            image_backbone=options.image_backbone,
            text_backbone=options.text_backbone,
            device=options.device,
            progress=options.progress,
        )
        gc.collect()

    feast_project = options.feast_project or f"pq_{catalogue.spec.name}"
    with timer.stage("features"):
        store_settings = publish_features(
            embedded,
            feature_data_dir=run_dir / "features",
            online_store=options.online_store,
            redis_connection_string=options.redis_connection_string,
            feast_project=feast_project,
            event_time=started_at,
        )

    with timer.stage("train"):
        if options.fusion_head == BOOSTED_HEAD:
            trained = train_and_save_boosted(
                embedded,
                split,
                checkpoint_dir=run_dir / "model",
                model_version=run_name,
                seed=options.seed,
                config=cast(BoostedConfig, boosted_config),
            )
        else:
            trained = train_and_save(
                embedded,
                split,
                checkpoint_dir=run_dir / "model",
                model_version=run_name,
                seed=options.seed,
                epochs=options.epochs,
                device=options.device,
                fusion_head=cast(FusionHead, options.fusion_head),
                use_auxiliary_labels=options.auxiliary_labels,
            )

    write_serving_environment(run_dir / "serve.env", trained.checkpoint_dir, store_settings)

    with timer.stage("evaluate"):
        reference = predict_in_process(trained.checkpoint_dir, embedded, split.test, device=options.device)

    with timer.stage("serve_and_score"):
        served = score_through_services(
            trained.checkpoint_dir,
            embedded,
            split.test,
            store_settings=store_settings,
            log_dir=run_dir / "logs",
            device=options.device,
            inline_products=options.inline_products,
        )

    report = JobReport.build(
        run_dir=run_dir,
        options={
            **{key: None if value is None else str(value) for key, value in asdict(options).items()},
            # A generated sample catalogue lives in the run folder; experiments read it from there.
            "catalogue": str(catalogue.root),
        },
        catalogue=catalogue,
        split_sizes={"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        labels=catalogue.labels[split.test],
        reference=reference,
        served=served,
        training=trained.training,
        stage_seconds=timer.seconds,
        model_version=run_name,
        feast_project=feast_project,
        online_store=options.online_store,
        image_model_id=embedded.image_model_id,
        text_model_id=embedded.text_model_id,
    )
    write_report(report)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_options(argv)
    report = run_job(options)
    sys.stdout.write(report.console_summary() + "\n")
    return 0 if report.served_matches_reference else 1


if __name__ == "__main__":
    np.set_printoptions(precision=4, suppress=True)
    raise SystemExit(main())
