import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest

import fusion.checkpoint as checkpoint_module
from fusion.checkpoint import (
    METADATA_FILE,
    CheckpointError,
    CheckpointIntegrityError,
    default_model_version,
    load_checkpoint,
    save_checkpoint,
)
from fusion.inference import FusionInputs, FusionPredictor


def _predict(directory, make_inputs) -> np.ndarray:
    predictor = FusionPredictor.from_checkpoint(directory, device="cpu")
    image, text, rows = make_inputs(16)
    inputs = FusionInputs.from_optional(
        list(image), list(text), rows, image_dim=predictor.image_dim, text_dim=predictor.text_dim
    )
    predictions = predictor.predict(inputs)
    return np.concatenate([predictions.quality[:, None], predictions.contributions, predictions.baseline[:, None]], 1)


def test_round_trip_same_predictions(make_checkpoint, make_inputs, tmp_path):
    directory = make_checkpoint()
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)

    np.testing.assert_array_equal(_predict(directory, make_inputs), _predict(copy, make_inputs))


def test_round_trip_same_state(make_checkpoint, tmp_path):
    bundle = load_checkpoint(make_checkpoint())
    metadata = bundle.metadata
    resaved = save_checkpoint(tmp_path / "resaved", bundle.model, bundle.attribute_encoder, metadata)
    again = load_checkpoint(resaved)

    for name, tensor in bundle.model.state_dict().items():
        assert np.array_equal(tensor.numpy(), again.model.state_dict()[name].numpy()), name
    assert again.metadata == metadata
    assert again.config == bundle.config
    assert again.weights_sha256 == bundle.weights_sha256


def test_metadata_fields_stored(make_checkpoint):
    directory = make_checkpoint("binary")
    document = json.loads((directory / METADATA_FILE).read_text())
    bundle = load_checkpoint(directory)

    assert document["format_version"] == 1
    assert document["weights"]["format"] == "safetensors"
    assert document["metrics"]["validation"]["roc_auc"] is None  # NaN is not valid JSON
    assert bundle.metadata.task == "binary"
    assert bundle.metadata.class_labels == ["0", "1"]
    assert bundle.metadata.image_model_id == "image-test@00000000"
    assert bundle.metadata.feature_schema["categorical_attributes"] == ["category"]
    assert bundle.metadata.seed == 0
    assert not bundle.model.training


def test_tampered_weights_rejected(make_checkpoint):
    directory = make_checkpoint()
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointIntegrityError, match="weights.safetensors has sha256") as error:
        load_checkpoint(directory)
    recorded = json.loads((directory / METADATA_FILE).read_text())["weights"]["sha256"]
    assert recorded in str(error.value)


def test_torch_fallback_round_trip(make_checkpoint, make_inputs, monkeypatch, tmp_path):
    reference = make_checkpoint()
    bundle = load_checkpoint(reference)
    expected = _predict(reference, make_inputs)
    monkeypatch.setattr(checkpoint_module, "safetensors_torch", None)

    directory = save_checkpoint(tmp_path / "torch", bundle.model, bundle.attribute_encoder, bundle.metadata)

    assert (directory / "weights.pt").is_file()
    np.testing.assert_array_equal(expected, _predict(directory, make_inputs))


def test_existing_directory_rejected(make_checkpoint):
    directory = make_checkpoint()
    bundle = load_checkpoint(directory)

    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(directory, bundle.model, bundle.attribute_encoder, bundle.metadata)
    save_checkpoint(directory, bundle.model, bundle.attribute_encoder, bundle.metadata, overwrite=True)
    assert sorted(path.name for path in directory.iterdir()) == [METADATA_FILE, "weights.safetensors"]
    assert [path.name for path in directory.parent.iterdir() if path.name.startswith(".")] == []


def test_missing_metadata_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint.json found"):
        load_checkpoint(tmp_path)


def test_unknown_format_version_rejected(make_checkpoint):
    directory = make_checkpoint()
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    document["format_version"] = 99
    path.write_text(json.dumps(document))

    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(directory)


def test_inconsistent_encoder_rejected(make_checkpoint):
    directory = make_checkpoint()
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    document["attribute_encoder"]["vocabularies"]["category"].append("d")
    path.write_text(json.dumps(document))

    with pytest.raises(CheckpointError, match="cardinalities"):
        load_checkpoint(directory)


def test_default_model_version_format():
    created = datetime(2026, 12, 4, 21, 35, 0, tzinfo=UTC)

    assert default_model_version("boardgames", created) == "boardgames-20261204T213500"


def test_checkpoint_folder_readable_by_others(make_checkpoint):
    directory = make_checkpoint()

    assert directory.stat().st_mode & 0o755 == 0o755
