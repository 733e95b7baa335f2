"""Fault injection: a corrupted or mismatched checkpoint is rejected when the predictor starts.

Each test edits a fresh small checkpoint and checks that loading it raises SettingsError (exit status
2 from the service process) with a message that names what differs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fusion.checkpoint_files import file_sha256
from services.common.settings import SettingsError
from services.fusion_predictor import PredictorSettings
from services.fusion_predictor.server import feature_schema_of, load_predictor
from tests.services.fault_support import SCHEMA, save_small_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
METADATA_FILE = "checkpoint.json"


class MarkerOnUnpickle:
    """An object whose unpickling creates a file: proof that a loader ran arbitrary pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def edit_document(directory: Path, edit: Callable[[dict], None]) -> None:
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def rejection(directory: Path) -> str:
    """Load `directory` as the service does at start and return the SettingsError message."""
    settings = PredictorSettings.from_env({}, model_path=directory, device="cpu")
    with pytest.raises(SettingsError) as raised:
        feature_schema_of(load_predictor(settings))
    return str(raised.value)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_small_checkpoint(tmp_path / "checkpoint")


def test_changed_weights_rejected(checkpoint: Path) -> None:
    weights = checkpoint / "weights.safetensors"
    recorded = file_sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    message = rejection(checkpoint)

    assert "PQ_PREDICTOR_MODEL_PATH" in message
    assert f"records {recorded}" in message
    assert f"has sha256 {file_sha256(weights)}" in message


def test_pickle_weights_rejected(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    weights = checkpoint / "weights.pt"
    weights.write_bytes(pickle.dumps({"linear.weight": MarkerOnUnpickle(marker)}, protocol=2))
    (checkpoint / "weights.safetensors").unlink()

    def point_at_pickle(document: dict) -> None:
        # A matching hash, as an attacker who can write the directory would record.
        document["weights"] = {"file": "weights.pt", "format": "torch", "sha256": file_sha256(weights)}

    edit_document(checkpoint, point_at_pickle)

    message = rejection(checkpoint)

    assert "weights.pt" in message
    assert "Weights only load failed" in message
    assert not marker.exists()


def test_schema_attributes_mismatch_rejected(checkpoint: Path) -> None:
    def rename_attribute(document: dict) -> None:
        document["feature_schema"]["numeric_attributes"] = ["weight"]

    edit_document(checkpoint, rename_attribute)

    message = rejection(checkpoint)

    assert "inconsistent" in message
    assert "'weight'" in message
    assert "'price'" in message


def test_schema_encoder_ids_mismatch_rejected(checkpoint: Path) -> None:
    def swap_image_model(document: dict) -> None:
        document["feature_schema"]["image_model_id"] = "resnet18.imagenet.224@00000000"

    edit_document(checkpoint, swap_image_model)

    message = rejection(checkpoint)

    assert "encoder model ids" in message
    assert "'resnet18.imagenet.224@00000000'" in message
    assert repr(SCHEMA.image_model_id) in message


def test_schema_embedding_size_mismatch_rejected(checkpoint: Path) -> None:
    def grow_text_embedding(document: dict) -> None:
        document["feature_schema"]["text_embedding_dim"] = 384

    edit_document(checkpoint, grow_text_embedding)

    message = rejection(checkpoint)

    assert "embedding sizes (4, 384)" in message
    assert "model's (4, 3)" in message


def test_service_exits_on_changed_weights(checkpoint: Path) -> None:
    weights = checkpoint / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PQ_")},
        "PQ_PREDICTOR_MODEL_PATH": str(checkpoint),
        "PQ_PREDICTOR_ADDRESS": "127.0.0.1:0",
        "PQ_PREDICTOR_DEVICE": "cpu",
    }

    result = subprocess.run(
        [sys.executable, "-m", "services.fusion_predictor"],
        check=False, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 2
    assert "fusion predictor not started" in result.stderr
    assert "was changed or corrupted after saving" in result.stderr
