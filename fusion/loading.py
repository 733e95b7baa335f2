"""Load a model directory of any kind: a neural fusion checkpoint or a boosted one."""

from __future__ import annotations

import json
from pathlib import Path

from fusion.boosted.checkpoint import BOOSTED_MODEL_KIND, load_boosted_checkpoint
from fusion.boosted.predictor import BoostedPredictor
from fusion.checkpoint_files import METADATA_FILE, NEURAL_MODEL_KIND, CheckpointError
from fusion.predictions import QualityModel

Predictor = QualityModel


def model_kind(directory: Path | str) -> str:
    """Return the model_kind recorded in a checkpoint directory ("neural" or "boosted")."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(
            f"No {METADATA_FILE} found in {directory}. The path must be a model directory written by the main job."
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError covers invalid JSON and invalid UTF-8
        raise CheckpointError(f"Cannot read {path}: {error}.") from error
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    kind = document.get("model_kind", NEURAL_MODEL_KIND)
    if kind not in (NEURAL_MODEL_KIND, BOOSTED_MODEL_KIND):
        raise CheckpointError(f"{path} records the unknown model_kind {kind!r}; expected neural or boosted.")
    return str(kind)


def load_predictor(directory: Path | str, *, device: str = "auto") -> Predictor:
    """Return the predictor for the checkpoint in `directory`; boosted models always run on the CPU.

    torch is imported only for a neural checkpoint, so a process serving a boosted model does without it.
    """
    if model_kind(directory) == BOOSTED_MODEL_KIND:
        return BoostedPredictor(load_boosted_checkpoint(directory))
    from fusion.inference import FusionPredictor

    return FusionPredictor.from_checkpoint(directory, device=device)
