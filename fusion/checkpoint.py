"""Versioned fusion-model checkpoints: a directory with the weights and a checkpoint.json.

checkpoint.json contains everything besides the weights that serving the model needs. That is the
FusionConfig, the fitted AttributeEncoder, the caller's feature schema, the label name and scaling,
the encoder model ids, metrics, the training config and seed. It also records the sha256 of the
weights file, which `load_checkpoint` verifies before loading.

The errors, CheckpointMetadata and the file helpers that other model kinds share are in
fusion/checkpoint_files.py and importable from here too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import torch

from fusion.attributes import AttributeEncoder, AttributeEncodingError
from fusion.checkpoint_files import (
    METADATA_FILE,
    NEURAL_MODEL_KIND,
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
from fusion.model import FusionConfig, FusionModel

safetensors_torch: ModuleType | None
try:
    import safetensors.torch as safetensors_torch
except ImportError:  # the torch.save fallback below covers environments without safetensors
    safetensors_torch = None

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
SAFETENSORS_WEIGHTS_FILE = "weights.safetensors"
TORCH_WEIGHTS_FILE = "weights.pt"


@dataclass
class FusionBundle:
    """A loaded checkpoint: the model in eval mode with everything needed to build its inputs."""

    model: FusionModel
    config: FusionConfig
    attribute_encoder: AttributeEncoder
    metadata: CheckpointMetadata
    directory: Path
    weights_sha256: str


def default_model_version(dataset_name: str, created_at: datetime | None = None) -> str:
    """Return a model version such as "boardgames-20261204T213500" (UTC time of `created_at`, default now)."""
    created_at = created_at or datetime.now(UTC)
    return f"{dataset_name}-{created_at.astimezone(UTC):%Y%m%dT%H%M%S}"


def save_checkpoint(
    directory: Path | str,
    model: FusionModel,
    attribute_encoder: AttributeEncoder,
    metadata: CheckpointMetadata,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory and return its path.

    The files are written to a temporary sibling directory that is then renamed, so a reader never
    sees a half-written checkpoint. An existing non-empty directory raises CheckpointError unless
    `overwrite` is True.
    """
    directory = Path(directory)
    _check_consistent(model.config, attribute_encoder, metadata)
    def write(staging: Path) -> None:
        weights_file, weights_format = _write_weights(staging, model)
        document = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model_kind": NEURAL_MODEL_KIND,
            **metadata_document(metadata),
            "label": {
                "name": metadata.label_name,
                "mean": metadata.label_scaling.mean,
                "std": metadata.label_scaling.std,
                "class_labels": list(metadata.class_labels),
            },
            "model_config": model.config.to_dict(),
            "attribute_encoder": attribute_encoder.to_dict(),
            "weights": {
                "file": weights_file.name,
                "format": weights_format,
                "sha256": file_sha256(weights_file),
            },
        }
        write_metadata_file(staging, document)

    write_directory_atomically(directory, write, overwrite=overwrite)
    logger.info("Saved fusion checkpoint %s (model version %s)", directory, metadata.model_version)
    return directory


def load_checkpoint(directory: Path | str, *, device: torch.device | str = "cpu") -> FusionBundle:
    """Load a checkpoint after verifying its weights file against the recorded sha256.

    Raises CheckpointIntegrityError when the hash differs and CheckpointError when a file is missing,
    the format version is unsupported or the parts do not fit together.
    """
    directory = Path(directory)
    metadata_path = directory / METADATA_FILE
    if not metadata_path.is_file():
        raise CheckpointError(
            f"No {METADATA_FILE} found in {directory}. The path must be a checkpoint directory written "
            "by save_checkpoint."
        )
    try:
        document = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError covers invalid JSON and invalid UTF-8
        raise CheckpointError(f"Cannot read {metadata_path}: {error}.") from error

    kind = document.get("model_kind", NEURAL_MODEL_KIND)
    if kind != NEURAL_MODEL_KIND:
        raise CheckpointError(
            f"Checkpoint {directory} contains a {kind!r} model, not a neural fusion model. Load it with "
            "fusion.loading.load_predictor, which reads every model kind."
        )
    version = document.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {directory} has format version {version!r}, but this code reads version "
            f"{CHECKPOINT_FORMAT_VERSION}. Retrain the model or use the code version that wrote it."
        )

    try:
        config = FusionConfig.from_dict(document["model_config"])
        attribute_encoder = AttributeEncoder.from_dict(document["attribute_encoder"])
        label = document["label"]
        scaling = LabelScaling(task=document["task"], mean=label["mean"], std=label["std"])
        metadata = metadata_from_document(document, scaling)
        weights_record = document["weights"]
    except KeyError as error:
        hint = "" if "model_kind" in document else " A checkpoint without model_kind is read as a neural one."
        raise CheckpointError(f"{metadata_path} is incomplete because the field {error} is missing.{hint}") from error
    except (TypeError, ValueError, AttributeEncodingError) as error:
        raise CheckpointError(f"{metadata_path} has an invalid value: {error}") from error
    _check_consistent(config, attribute_encoder, metadata)

    weights_path = directory / weights_record["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"Checkpoint weights file {weights_path} is missing.")
    actual_sha256 = file_sha256(weights_path)
    if actual_sha256 != weights_record["sha256"]:
        raise CheckpointIntegrityError(
            f"Checkpoint weights file {weights_path} has sha256 {actual_sha256}, but {METADATA_FILE} records "
            f"{weights_record['sha256']}; the file was changed or corrupted after saving. Restore the "
            "original file or retrain."
        )

    state_dict = _read_weights(weights_path, weights_record["format"])
    model = FusionModel(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"Weights in {weights_path} do not fit the recorded FusionConfig: {error}") from error
    model.to(device).eval()

    logger.info("Loaded fusion checkpoint %s (model version %s)", directory, metadata.model_version)
    return FusionBundle(
        model=model,
        config=config,
        attribute_encoder=attribute_encoder,
        metadata=metadata,
        directory=directory,
        weights_sha256=actual_sha256,
    )


def _check_consistent(config: FusionConfig, encoder: AttributeEncoder, metadata: CheckpointMetadata) -> None:
    problems = []
    if config.task != metadata.task:
        problems.append(f"the model task is {config.task!r} but the label scaling task is {metadata.task!r}")
    if encoder.numeric_dim != config.numeric_dim:
        problems.append(
            f"the attribute encoder gives {encoder.numeric_dim} numeric inputs but the model takes {config.numeric_dim}"
        )
    if encoder.categorical_cardinalities != list(config.categorical_cardinalities):
        problems.append(
            f"the attribute encoder's categorical cardinalities {encoder.categorical_cardinalities} differ from "
            f"the model's {list(config.categorical_cardinalities)}"
        )
    if metadata.task == "binary" and len(metadata.class_labels) != 2:
        problems.append(f"a binary model needs two class labels, got {metadata.class_labels}")
    if metadata.task == "regression" and metadata.class_labels:
        problems.append(f"a regression model has no class labels, got {metadata.class_labels}")
    if problems:
        raise CheckpointError("Inconsistent checkpoint: " + "; ".join(problems) + ".")


def _write_weights(directory: Path, model: FusionModel) -> tuple[Path, str]:
    state_dict = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if safetensors_torch is not None:
        path = directory / SAFETENSORS_WEIGHTS_FILE
        safetensors_torch.save_file(state_dict, str(path))
        return path, "safetensors"
    path = directory / TORCH_WEIGHTS_FILE
    torch.save(state_dict, path)
    return path, "torch"


def _read_weights(path: Path, weights_format: str) -> dict[str, torch.Tensor]:
    if weights_format == "safetensors":
        if safetensors_torch is None:
            raise CheckpointError(
                f"Checkpoint weights {path} are in safetensors format, but the safetensors package is not "
                "installed; install it with pip."
            )
        return safetensors_torch.load_file(str(path), device="cpu")
    if weights_format == "torch":
        return torch.load(path, map_location="cpu", weights_only=True)
    raise CheckpointError(f"Checkpoint weights {path} have the unknown format {weights_format!r}.")
