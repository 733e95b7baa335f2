"""The parts of a checkpoint directory that every model kind shares, without torch.

A checkpoint directory contains checkpoint.json and the model's files. checkpoint.json records the
model kind, the metadata in CheckpointMetadata and the sha256 of each model file.

    CheckpointError            the checkpoint is missing, unreadable or inconsistent
     +-- CheckpointIntegrityError   a model file does not match the sha256 recorded for it
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fusion.labels import LabelScaling

METADATA_FILE = "checkpoint.json"
NEURAL_MODEL_KIND = "neural"  # checkpoint.json's model_kind; files without one are neural


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, unreadable or inconsistent with this code."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint's weights file does not match the sha256 recorded in checkpoint.json."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything in checkpoint.json besides the model config, the attribute encoder and the weights record."""

    model_version: str  # for example "boardgames-20261204T213500"
    label_name: str
    label_scaling: LabelScaling
    feature_schema: dict[str, Any]  # opaque to this module; FeatureSchema.to_dict() in the pipeline
    image_model_id: str
    text_model_id: str
    class_labels: list[str] = field(default_factory=list)  # [negative, positive] for binary, [] for regression
    metrics: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def task(self) -> str:
        return self.label_scaling.task


def write_directory_atomically(directory: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Call `write` on a temporary sibling folder, then rename it to `directory`.

    A reader never sees a half-written checkpoint. An existing non-empty `directory` raises
    CheckpointError unless `overwrite` is True.
    """
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(
            f"Checkpoint directory {directory} already exists and is not empty. Choose a new directory "
            "or pass overwrite=True."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    # mkdtemp creates the folder readable by its owner only; serving containers run as another user.
    staging.chmod(0o755)
    try:
        write(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def metadata_document(metadata: CheckpointMetadata) -> dict[str, Any]:
    """Return the checkpoint.json fields shared by every model kind, label and model settings aside."""
    return {
        "model_version": metadata.model_version,
        "created_at": metadata.created_at,
        "task": metadata.task,
        "feature_schema": metadata.feature_schema,
        "encoders": {"image_model_id": metadata.image_model_id, "text_model_id": metadata.text_model_id},
        "metrics": metadata.metrics,
        "training_config": metadata.training_config,
        "seed": metadata.seed,
    }


def write_metadata_file(directory: Path, document: Mapping[str, Any]) -> None:
    """Write checkpoint.json, with NaN and infinite floats as null."""
    text = json.dumps(json_safe(document), indent=2, sort_keys=False, allow_nan=False)
    (directory / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


def metadata_from_document(document: Mapping[str, Any], label_scaling: LabelScaling) -> CheckpointMetadata:
    """Return the CheckpointMetadata of a parsed checkpoint.json; raises KeyError for a missing field."""
    return CheckpointMetadata(
        model_version=document["model_version"],
        label_name=document["label"]["name"],
        label_scaling=label_scaling,
        feature_schema=document["feature_schema"],
        image_model_id=document["encoders"]["image_model_id"],
        text_model_id=document["encoders"]["text_model_id"],
        class_labels=list(document["label"]["class_labels"]),
        metrics=document.get("metrics") or {},
        training_config=document.get("training_config") or {},
        seed=document.get("seed"),
        created_at=document["created_at"],
    )


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """Replace NaN and ±inf floats, which JSON cannot represent, by None (for example an undefined ROC AUC)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
