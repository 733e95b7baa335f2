"""Boosted-head checkpoints: checkpoint.json plus the projections and each member's model file.

checkpoint.json has the fields of a neural checkpoint (fusion/checkpoint.py) with model_kind
"boosted", the BoostedConfig instead of a FusionConfig, and the sha256 of every model file, which
`load_boosted_checkpoint` verifies before reading any of them. The directory is written under a
temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
from catboost import CatBoostError

from fusion.attributes import AttributeEncoder, AttributeEncodingError
from fusion.boosted.config import BoostedConfig, BoostedConfigError
from fusion.boosted.members import MEMBER_TYPES
from fusion.boosted.model import PROJECTIONS_FILE, BoostedFusionModel
from fusion.checkpoint_files import (
    METADATA_FILE,
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointMetadata,
    file_sha256,
    metadata_document,
    metadata_from_document,
    write_directory_atomically,
    write_metadata_file,
)
from fusion.labels import LabelScaling

logger = logging.getLogger(__name__)

BOOSTED_MODEL_KIND = "boosted"
BOOSTED_FORMAT_VERSION = 1


@dataclass
class BoostedBundle:
    """A loaded boosted checkpoint."""

    model: BoostedFusionModel
    metadata: CheckpointMetadata
    directory: Path


def save_boosted_checkpoint(
    directory: Path | str, model: BoostedFusionModel, metadata: CheckpointMetadata, *, overwrite: bool = False
) -> Path:
    """Write the model and its metadata to `directory` and return it."""
    directory = Path(directory)
    if metadata.task != model.task:
        raise CheckpointError(f"the metadata task {metadata.task!r} differs from the model's {model.task!r}")
    def write(staging: Path) -> None:
        files = model.save(staging)
        document = {
            "format_version": BOOSTED_FORMAT_VERSION,
            "model_kind": BOOSTED_MODEL_KIND,
            **metadata_document(metadata),
            "label": {"name": metadata.label_name, "class_labels": list(metadata.class_labels)},
            "boosted_config": model.config.to_dict(),
            "attribute_encoder": model.encoder.to_dict(),
            "files": {path.name: file_sha256(path) for path in files},
        }
        write_metadata_file(staging, document)

    write_directory_atomically(directory, write, overwrite=overwrite)
    logger.info("Saved boosted checkpoint %s (model version %s)", directory, metadata.model_version)
    return directory


def _check_metadata(metadata: CheckpointMetadata, directory: Path) -> None:
    """Raise CheckpointError when the model version or class labels do not fit the task."""
    problems = []
    if not isinstance(metadata.model_version, str) or not metadata.model_version:
        problems.append(f"model_version must be a non-empty string, got {metadata.model_version!r}")
    if metadata.task == "binary" and len(metadata.class_labels) != 2:
        problems.append(f"a binary model needs two class labels, got {metadata.class_labels}")
    if metadata.task == "regression" and metadata.class_labels:
        problems.append(f"a regression model has no class labels, got {metadata.class_labels}")
    if problems:
        raise CheckpointError(f"Inconsistent boosted checkpoint {directory}: " + "; ".join(problems) + ".")


def _check_file_list(files: dict[str, object], config: BoostedConfig, directory: Path) -> None:
    """Raise CheckpointError unless `files` records exactly the model's files, by plain name."""
    expected = {PROJECTIONS_FILE, *(MEMBER_TYPES[name].file_name for name in config.members)}
    if set(files) != expected:
        raise CheckpointError(
            f"{directory / METADATA_FILE} records the files {sorted(files)}, but a boosted model with members "
            f"{list(config.members)} has {sorted(expected)}. Restore the original checkpoint.json or retrain."
        )


def load_boosted_checkpoint(directory: Path | str, document: dict | None = None) -> BoostedBundle:
    """Load a boosted checkpoint after verifying every file against its recorded sha256.

    Raises CheckpointIntegrityError for a changed file and CheckpointError for anything missing or
    inconsistent. `document` is checkpoint.json already parsed, if the caller read it.
    """
    directory = Path(directory)
    if document is None:
        try:
            document = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # ValueError covers invalid JSON and invalid UTF-8
            raise CheckpointError(f"Cannot read {directory / METADATA_FILE}: {error}.") from error
    if not isinstance(document, dict):
        raise CheckpointError(f"{directory / METADATA_FILE} must hold a JSON object.")
    if document.get("format_version") != BOOSTED_FORMAT_VERSION:
        raise CheckpointError(
            f"Boosted checkpoint {directory} has format version {document.get('format_version')!r}, but this "
            f"code reads version {BOOSTED_FORMAT_VERSION}. Retrain the model or use the code version that wrote it."
        )
    try:
        for section in ("boosted_config", "attribute_encoder", "files", "label", "encoders"):
            if not isinstance(document[section], dict):
                raise TypeError(f"the field {section!r} must be a JSON object, got {document[section]!r}")
        config = BoostedConfig.from_dict(document["boosted_config"])
        encoder = AttributeEncoder.from_dict(document["attribute_encoder"])
        task = document["task"]
        metadata = metadata_from_document(document, LabelScaling(task=task))
        files = dict(document["files"])
    except KeyError as error:
        raise CheckpointError(f"{directory / METADATA_FILE} is incomplete because the field {error} is missing.") from error
    except (TypeError, ValueError, AttributeEncodingError, BoostedConfigError) as error:
        raise CheckpointError(f"{directory / METADATA_FILE} has an invalid value: {error}") from error
    _check_metadata(metadata, directory)
    _check_file_list(files, config, directory)

    for name, recorded in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"Checkpoint file {path} is missing.")
        actual = file_sha256(path)
        if actual != recorded:
            raise CheckpointIntegrityError(
                f"Checkpoint file {path} has sha256 {actual}, but {METADATA_FILE} records {recorded}; the file "
                "was changed or corrupted after saving. Restore the original file or retrain."
            )
    # NOTE: LightGBM aborts the process on some malformed model text. The sha256 check above stops
    # a changed file, so only a file edited together with its recorded hash can get there.
    try:
        model = BoostedFusionModel.load(directory, config, encoder, task, seed=metadata.seed or 0)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, lgb.basic.LightGBMError, CatBoostError) as error:
        raise CheckpointError(f"Cannot load the boosted model in {directory}: {error}") from error
    problems = model.consistency_problems()
    if problems:
        raise CheckpointError(f"Inconsistent boosted checkpoint {directory}: " + "; ".join(problems) + ".")
    logger.info("Loaded boosted checkpoint %s (model version %s)", directory, metadata.model_version)
    return BoostedBundle(model=model, metadata=metadata, directory=directory)
