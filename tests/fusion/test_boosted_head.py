"""The boosted fusion head: settings, embedding projections, planted signals, Shapley values, checkpoints.

The planted-signal tests reuse the generated products of test_fusion_heads.py, with labels that
depend on one modality only, and train with small settings (FAST) so the whole file runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from features.schema import FeatureSchema
from fusion.attributes import AttributeEncoder
from fusion.boosted.checkpoint import load_boosted_checkpoint, save_boosted_checkpoint
from fusion.boosted.config import BoostedConfig, BoostedConfigError, CatBoostSettings, LightGBMSettings
from fusion.boosted.members import CatBoostMember
from fusion.boosted.model import BoostedFusionModel
from fusion.boosted.predictor import BoostedPredictor
from fusion.boosted.projections import EmbeddingProjection
from fusion.checkpoint import METADATA_FILE, CheckpointError, CheckpointIntegrityError, CheckpointMetadata, load_checkpoint
from fusion.inference import FusionPredictor
from fusion.labels import LabelScaling
from fusion.loading import load_predictor, model_kind
from fusion.model import MODALITIES
from tests.fusion.test_fusion_heads import NOISE, Products, _make_products
from services.common.settings import SettingsError
from services.fusion_predictor.server import feature_schema_of
from training.pipeline import DEFAULT_BOOSTED_CONFIG, parse_options

# Small settings: a few hundred trees at a high learning rate, one kNN size, three inner folds.
FAST = BoostedConfig(
    max_trees=200,
    early_stopping_rounds=20,
    # With 2 threads on 2 cores, one of them busy with another process, each LightGBM fit took 5 to 60 s
    # instead of 0.3 s, because its OpenMP threads wait on each other.
    threads=1,
    text_knn_neighbours=(3,),
    image_knn_neighbours=(3,),
    projection_folds=3,
    lightgbm=LightGBMSettings(learning_rate=0.1),
    catboost=CatBoostSettings(learning_rate=0.1, depth=4),
)
TRAIN_ROWS = 400
TEST_ROWS = 200
# With FAST and one modality carrying the label, the held-out R^2 was 0.97 to 0.98 for each
# modality, measured with this file's data on 2 CPU cores. The noise caps it at about 0.99.
MIN_TEST_R2 = 0.8
MODEL_FILES = ("projections.npz", "lightgbm.txt", "catboost.cbm")


def _with_single_signal(products: Products, modality: int, seed: int) -> Products:
    """Return the products with labels made from the planted part of one modality plus noise."""
    rng = np.random.default_rng(seed + 100)
    labels = products.signals()[:, modality] + NOISE * rng.normal(size=len(products.labels))
    return replace(products, labels=labels.astype(np.float32))


def _fit_and_save(
    products: Products, encoder: AttributeEncoder, directory: Path, task: str = "regression"
) -> BoostedFusionModel:
    present = np.ones((len(products.labels), 3), dtype=bool)
    model = BoostedFusionModel(FAST, encoder, task, seed=0)
    model.fit(
        encoder.transform_frame(products.attributes), products.image, products.text, present, products.labels
    )
    metadata = CheckpointMetadata(
        model_version=f"test-boosted-{task}",
        label_name="quality",
        label_scaling=LabelScaling(task),
        feature_schema={},
        image_model_id="image-test@00000000",
        text_model_id="text-test@00000000",
        class_labels=["0", "1"] if task == "binary" else [],
        seed=0,
    )
    save_boosted_checkpoint(directory, model, metadata)
    return model


@dataclass(frozen=True)
class TrainedBoosted:
    model: BoostedFusionModel
    checkpoint_dir: Path
    test: Products
    signal_modality: int | None  # the only modality the label depends on, or None when all three do


@pytest.fixture(scope="module")
def attribute_encoder() -> AttributeEncoder:
    return AttributeEncoder(["size", "weight"], ["colour"], min_count=1).fit(_make_products(TRAIN_ROWS, 0).attributes)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=list(MODALITIES))
def planted(
    request: pytest.FixtureRequest, attribute_encoder: AttributeEncoder, tmp_path_factory: pytest.TempPathFactory
) -> TrainedBoosted:
    """Fit and save a boosted head whose label depends on one modality only."""
    modality: int = request.param
    train = _with_single_signal(_make_products(TRAIN_ROWS, 0), modality, seed=0)
    directory = tmp_path_factory.mktemp(f"boosted_{MODALITIES[modality]}") / "checkpoint"
    model = _fit_and_save(train, attribute_encoder, directory)
    test = _with_single_signal(_make_products(TEST_ROWS, 2), modality, seed=2)
    return TrainedBoosted(model=model, checkpoint_dir=directory, test=test, signal_modality=modality)


@pytest.fixture(scope="module")
def mixed(attribute_encoder: AttributeEncoder, tmp_path_factory: pytest.TempPathFactory) -> TrainedBoosted:
    """Fit and save a boosted head whose label depends on all three modalities."""
    directory = tmp_path_factory.mktemp("boosted_mixed") / "checkpoint"
    model = _fit_and_save(_make_products(TRAIN_ROWS, 0), attribute_encoder, directory)
    return TrainedBoosted(model=model, checkpoint_dir=directory, test=_make_products(TEST_ROWS, 2), signal_modality=None)


@pytest.fixture
def mixed_copy(mixed: TrainedBoosted, tmp_path: Path) -> Path:
    """A copy of the mixed checkpoint that a test may change."""
    return Path(shutil.copytree(mixed.checkpoint_dir, tmp_path / "checkpoint"))


# Settings.


def test_config_defaults_round_trip(tmp_path: Path):
    """Defaults survive to_dict/from_dict and a YAML file, and boosted.yaml contains exactly the defaults."""
    defaults = BoostedConfig()
    changed = replace(FAST, members=("catboost",), modality_dropout=0.0, sample_weighting="none")
    path = tmp_path / "boosted.yaml"
    path.write_text(yaml.safe_dump(changed.to_dict()), encoding="utf-8")

    assert BoostedConfig.from_dict(defaults.to_dict()) == defaults
    assert BoostedConfig.from_yaml(DEFAULT_BOOSTED_CONFIG) == defaults
    assert BoostedConfig.from_yaml(path) == changed
    assert json.loads(json.dumps(defaults.to_dict())) == defaults.to_dict()


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"max_tree": 5}, "max_tree"),
        ({"lightgbm": {"leaves": 3}}, "leaves"),
        ({"catboost": {"iterations": 3}}, "iterations"),
    ],
)
def test_config_unknown_key_rejected(data: dict, setting: str):
    """An unknown setting, top-level or in a member's section, raises BoostedConfigError naming it."""
    with pytest.raises(BoostedConfigError, match=setting):
        BoostedConfig.from_dict(data)


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"members": []}, "members"),
        ({"members": ["lightgbm", "xgboost"]}, "members"),
        ({"max_trees": 0}, "max_trees"),
        ({"early_stopping_rounds": 0}, "early_stopping_rounds"),
        ({"early_stopping_share": 0.5}, "early_stopping_share"),
        ({"early_stopping_share": 0.0}, "early_stopping_share"),
        ({"text_knn_neighbours": [5, 0]}, "text_knn_neighbours"),
        ({"image_knn_neighbours": [-1]}, "image_knn_neighbours"),
        ({"projection_folds": 1}, "projection_folds"),
        ({"modality_dropout": 1.5}, "modality_dropout"),
        ({"modality_dropout": -0.1}, "modality_dropout"),
        ({"threads": -1}, "threads"),
        ({"sample_weighting": "sqrt"}, "sample_weighting"),
        ({"lightgbm": {"learning_rate": 0.0}}, "lightgbm.learning_rate"),
        ({"lightgbm": {"num_leaves": 1}}, "lightgbm.num_leaves"),
        ({"lightgbm": {"feature_fraction": 1.5}}, "lightgbm.feature_fraction"),
        ({"lightgbm": {"bagging_fraction": 0.0}}, "lightgbm.bagging_fraction"),
        ({"catboost": {"learning_rate": 2.0}}, "catboost.learning_rate"),
        ({"catboost": {"depth": 17}}, "catboost.depth"),
    ],
)
def test_config_out_of_range_rejected(data: dict, setting: str):
    """An out-of-range value raises BoostedConfigError whose message names the setting."""
    with pytest.raises(BoostedConfigError) as raised:
        BoostedConfig.from_dict(data)

    assert setting in str(raised.value)


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"max_trees": "many"}, "max_trees"),
        ({"max_trees": True}, "max_trees"),
        ({"lightgbm": {"learning_rate": "fast"}}, "lightgbm.learning_rate"),
        ({"text_knn_neighbours": [5, 2.5]}, "text_knn_neighbours"),
    ],
)
def test_config_wrong_type_rejected(data: dict, setting: str):
    """A value of the wrong type raises BoostedConfigError whose message names the setting."""
    with pytest.raises(BoostedConfigError) as raised:
        BoostedConfig.from_dict(data)

    assert setting in str(raised.value)


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"text_knn_neighbours": 5}, "text_knn_neighbours"),
        ({"lightgbm": 5}, "lightgbm"),
    ],
)
def test_config_scalar_for_collection_rejected(data: dict, setting: str):
    """A scalar where a list or a section belongs raises BoostedConfigError naming the setting."""
    with pytest.raises(BoostedConfigError) as raised:
        BoostedConfig.from_dict(data)

    assert setting in str(raised.value)


@pytest.mark.parametrize(
    ("data", "setting"),
    [
        ({"lightgbm": {"min_data_in_leaf": 0}}, "lightgbm.min_data_in_leaf"),
        ({"lightgbm": {"lambda_l2": -1.0}}, "lightgbm.lambda_l2"),
        ({"catboost": {"l2_leaf_reg": -1.0}}, "catboost.l2_leaf_reg"),
    ],
)
def test_config_unchecked_ranges_rejected(data: dict, setting: str):
    """Negative regularisation or an empty leaf size raises BoostedConfigError before any fitting starts."""
    with pytest.raises(BoostedConfigError) as raised:
        BoostedConfig.from_dict(data)

    assert setting in str(raised.value)


def test_config_yaml_not_mapping(tmp_path: Path):
    """A YAML file that contains a list instead of a mapping raises BoostedConfigError naming the file."""
    path = tmp_path / "boosted.yaml"
    path.write_text("- lightgbm\n- catboost\n", encoding="utf-8")

    with pytest.raises(BoostedConfigError, match="boosted.yaml"):
        BoostedConfig.from_yaml(path)


def test_pipeline_boosted_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The main job trains the boosted head by default and rejects an invalid --boosted-config."""
    path = tmp_path / "bad.yaml"
    path.write_text("max_trees: 0\n", encoding="utf-8")

    assert parse_options([]).fusion_head == "boosted"
    assert parse_options([]).boosted_config == DEFAULT_BOOSTED_CONFIG
    with pytest.raises(SystemExit):
        parse_options(["--boosted-config", str(path)])
    assert "max_trees" in capsys.readouterr().err


# Embedding projections.


def _projection_data(n: int = 40, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return random vectors (n, dim) and labels that are 0 except 100 in row 0."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    labels = np.zeros(n)
    labels[0] = 100.0
    return vectors, labels


def test_projection_training_features_out_of_fold():
    """A label planted only in row 0 shows in no feature of row 0 itself, but in its neighbours' kNN means."""
    vectors, labels = _projection_data()
    projection = EmbeddingProjection(neighbours=(3, 39))

    features = projection.fit(vectors, labels, folds=3, seed=0)
    names = projection.feature_names

    assert names == ["ridge", "knn3_mean", "knn3_max_similarity", "knn39_mean", "knn39_max_similarity"]
    # The inner-fold ridge that predicts row 0 saw only zero labels.
    assert features[0, names.index("ridge")] == pytest.approx(0.0, abs=1e-9)
    assert features[0, names.index("knn3_mean")] == 0.0
    assert features[0, names.index("knn39_mean")] == 0.0
    # With 39 neighbours every other row has row 0 among them, so the label is visible to the others.
    assert (features[1:, names.index("knn39_mean")] > 0).all()
    assert (features[:, names.index("knn3_max_similarity")] < 1.0 - 1e-6).all()


def test_projection_exact_copy_excluded():
    """At serving, an exact copy of training row 0 does not see its own label, but a near copy does."""
    vectors, labels = _projection_data()
    projection = EmbeddingProjection(neighbours=(3,))
    projection.fit(vectors, labels, folds=3, seed=0)
    rng = np.random.default_rng(1)
    near_copy = vectors[0] + 0.05 * rng.normal(size=vectors.shape[1]).astype(np.float32)

    exact = projection.transform(vectors[:1])
    scaled = projection.transform(3.0 * vectors[:1])  # cosine similarity 1, so also an exact match
    near = projection.transform(near_copy[None, :])

    assert exact[0, 1] == 0.0
    assert scaled[0, 1] == 0.0
    assert exact[0, 2] < 1.0 - 1e-6
    assert near[0, 1] > 1.0  # row 0 is the nearest neighbour, with most of the weight
    assert near[0, 2] > 0.99


def test_projection_nan_rows_give_nan():
    """Rows with a NaN embedding get all-NaN features in fit and transform, and stay out of the index."""
    vectors, labels = _projection_data()
    vectors[[5, 7]] = np.nan
    vectors[9, 2] = np.nan  # one NaN value marks the whole row missing
    missing = np.zeros(len(vectors), dtype=bool)
    missing[[5, 7, 9]] = True
    projection = EmbeddingProjection(neighbours=(3,))

    features = projection.fit(vectors, labels, folds=3, seed=0)
    served = projection.transform(vectors)

    assert np.isnan(features[missing]).all()
    assert np.isfinite(features[~missing]).all()
    assert np.isnan(served[missing]).all()
    assert np.isfinite(served[~missing]).all()
    assert projection.index_vectors is not None
    assert len(projection.index_vectors) == len(vectors) - 3


def test_projection_too_few_rows_rejected():
    """Fitting with fewer present rows than neighbours + 1 raises ValueError with both numbers."""
    vectors, labels = _projection_data(n=6)
    vectors[2:] = np.nan

    with pytest.raises(ValueError, match="at least 4 rows with the embedding, got 2"):
        EmbeddingProjection(neighbours=(3,)).fit(vectors, labels, folds=3, seed=0)


# Planted signal and Shapley values.


def _r2(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(1.0 - np.mean((predicted - labels) ** 2) / np.var(labels))


def test_planted_signal_learned(planted: TrainedBoosted):
    """The head fits a label carried by one modality, and that modality gets the largest Shapley values."""
    predictor = BoostedPredictor.from_checkpoint(planted.checkpoint_dir)

    predictions = predictor.predict(planted.test.inputs())
    r2 = _r2(predictions.quality, planted.test.labels)
    mean_abs = np.abs(predictions.contributions).mean(axis=0)  # (3,)

    assert r2 > MIN_TEST_R2, f"test R^2 {r2:.3f} with the signal in {MODALITIES[planted.signal_modality]}"
    assert int(np.argmax(mean_abs)) == planted.signal_modality, f"mean |contribution| {mean_abs}"


def test_shapley_sums_to_quality_minus_baseline(planted: TrainedBoosted):
    """For every row, with any modalities missing, the contributions add up to quality - baseline."""
    predictor = BoostedPredictor.from_checkpoint(planted.checkpoint_dir)
    rng = np.random.default_rng(3)
    present = rng.random((TEST_ROWS, 3)) > 0.3

    predictions = predictor.predict(planted.test.inputs(present))

    np.testing.assert_allclose(
        predictions.contributions.sum(axis=1), predictions.quality - predictions.baseline, rtol=0, atol=1e-9
    )


def test_shapley_absent_modality_zero(planted: TrainedBoosted):
    """A modality missing from a row contributes exactly 0 to that row, whatever its input array contains."""
    predictor = BoostedPredictor.from_checkpoint(planted.checkpoint_dir)
    rng = np.random.default_rng(4)
    present = rng.random((TEST_ROWS, 3)) > 0.4
    present[0] = False  # a row with nothing at all

    predictions = predictor.predict(planted.test.inputs(present))

    signal = planted.signal_modality
    assert (predictions.contributions[~present] == 0.0).all()
    assert (predictions.contributions[present[:, signal], signal] != 0.0).mean() > 0.9
    assert predictions.quality[0] == predictions.baseline[0]


def test_removing_signal_modality_matches_shapley(planted: TrainedBoosted):
    """Dropping the signal modality moves predictions toward the baseline, in the sign of its contribution."""
    predictor = BoostedPredictor.from_checkpoint(planted.checkpoint_dir)
    modality = planted.signal_modality
    assert modality is not None
    present = np.ones((TEST_ROWS, 3), dtype=bool)
    present[:, modality] = False

    full = predictor.predict(planted.test.inputs())
    without = predictor.predict(planted.test.inputs(present))
    change = full.quality - without.quality  # (N,) what the modality adds
    contribution = full.contributions[:, modality]  # (N,)
    clear = np.abs(contribution) > 0.3

    assert clear.sum() > 50
    assert (np.sign(change[clear]) == np.sign(contribution[clear])).mean() > 0.95
    assert np.abs(without.quality - full.baseline).mean() < 0.5 * np.abs(full.quality - full.baseline).mean()


def test_binary_probabilities(attribute_encoder: AttributeEncoder, tmp_path: Path):
    """A binary head returns P(positive) in [0, 1], class probabilities whose rows sum to 1, and ranks well."""
    train = _make_products(TRAIN_ROWS, 0)
    train = replace(train, labels=(train.labels > np.median(train.labels)).astype(np.float32))
    test = _make_products(TEST_ROWS, 2)
    _fit_and_save(train, attribute_encoder, tmp_path / "binary", task="binary")
    predictor = BoostedPredictor.from_checkpoint(tmp_path / "binary")
    present = np.ones((TEST_ROWS, 3), dtype=bool)
    present[::4, 0] = False

    predictions = predictor.predict(test.inputs(present))

    assert predictor.task == "binary"
    assert predictor.class_labels == ["0", "1"]
    assert ((predictions.quality >= 0) & (predictions.quality <= 1)).all()
    assert predictions.class_probabilities is not None
    assert predictions.class_probabilities.shape == (TEST_ROWS, 2)
    np.testing.assert_allclose(predictions.class_probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(predictions.class_probabilities[:, 1], predictions.quality)
    assert roc_auc_score(test.labels > np.median(train.labels), predictions.quality) > 0.85


# Checkpoints.


def test_checkpoint_round_trip_identical(mixed: TrainedBoosted):
    """A loaded checkpoint predicts exactly what the fitted model predicted, with the same settings and files."""
    test = mixed.test
    present = np.ones((TEST_ROWS, 3), dtype=bool)
    present[::3, 1] = False
    inputs = test.inputs(present)
    encoded = mixed.model.encoder.transform(inputs.attributes)
    document = json.loads((mixed.checkpoint_dir / METADATA_FILE).read_text())

    bundle = load_boosted_checkpoint(mixed.checkpoint_dir)
    expected = mixed.model.predict(encoded, inputs.image, inputs.text, present)
    loaded = bundle.model.predict(encoded, inputs.image, inputs.text, present)
    served = BoostedPredictor(bundle).predict(inputs)

    assert document["model_kind"] == "boosted"
    assert sorted(document["files"]) == sorted(MODEL_FILES)
    assert bundle.model.config == FAST
    assert {name: m.trees for name, m in bundle.model.members.items()} == {
        name: m.trees for name, m in mixed.model.members.items()
    }
    np.testing.assert_array_equal(loaded, expected)
    np.testing.assert_array_equal(served.quality, expected)


@pytest.mark.parametrize("file_name", MODEL_FILES)
def test_checkpoint_changed_byte_rejected(mixed_copy: Path, file_name: str):
    """One changed byte in any model file raises CheckpointIntegrityError naming that file."""
    path = mixed_copy / file_name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointIntegrityError, match=f"{file_name} has sha256"):
        load_boosted_checkpoint(mixed_copy)
    with pytest.raises(CheckpointIntegrityError, match=file_name):
        load_predictor(mixed_copy)


def test_checkpoint_missing_file_rejected(mixed_copy: Path):
    """A model file removed after saving raises CheckpointError (not an integrity error) naming the file."""
    (mixed_copy / "lightgbm.txt").unlink()

    with pytest.raises(CheckpointError, match="lightgbm.txt is missing") as raised:
        load_boosted_checkpoint(mixed_copy)
    assert not isinstance(raised.value, CheckpointIntegrityError)


def test_checkpoint_existing_directory_rejected(mixed: TrainedBoosted, mixed_copy: Path, tmp_path: Path):
    """Saving over a non-empty directory needs overwrite=True and then leaves no staging folder behind."""
    metadata = load_boosted_checkpoint(mixed_copy).metadata

    with pytest.raises(CheckpointError, match="already exists"):
        save_boosted_checkpoint(mixed_copy, mixed.model, metadata)
    save_boosted_checkpoint(mixed_copy, mixed.model, metadata, overwrite=True)

    assert sorted(path.name for path in mixed_copy.iterdir()) == sorted([METADATA_FILE, *MODEL_FILES])
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_load_predictor_dispatches_on_kind(mixed: TrainedBoosted, make_checkpoint):
    """load_predictor returns a BoostedPredictor for a boosted directory and a FusionPredictor for a neural one."""
    neural_dir = make_checkpoint()

    boosted = load_predictor(mixed.checkpoint_dir)
    neural = load_predictor(neural_dir, device="cpu")

    assert model_kind(mixed.checkpoint_dir) == "boosted"
    assert model_kind(neural_dir) == "neural"
    assert isinstance(boosted, BoostedPredictor)
    assert isinstance(neural, FusionPredictor)
    assert boosted.model_kind == "boosted"
    assert neural.model_kind == "neural"


def test_neural_loader_rejects_boosted(mixed: TrainedBoosted):
    """fusion.checkpoint.load_checkpoint raises CheckpointError that names the kind and the loader to use."""
    with pytest.raises(CheckpointError, match="'boosted' model, not a neural fusion model") as raised:
        load_checkpoint(mixed.checkpoint_dir)

    assert "fusion.loading.load_predictor" in str(raised.value)


def test_unknown_model_kind_rejected(mixed_copy: Path):
    """A checkpoint.json with an unknown model_kind raises CheckpointError naming the kind."""
    path = mixed_copy / METADATA_FILE
    document = json.loads(path.read_text())
    document["model_kind"] = "forest"
    path.write_text(json.dumps(document))

    with pytest.raises(CheckpointError, match="unknown model_kind 'forest'"):
        load_predictor(mixed_copy)


def _edit_document(directory: Path, edit) -> None:
    path = directory / METADATA_FILE
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _replace_file_with_hash(directory: Path, name: str, data: bytes) -> None:
    """Overwrite a model file and record its new sha256, as a hand edit of both would."""
    (directory / name).write_bytes(data)
    _edit_document(directory, lambda document: document["files"].update({name: hashlib.sha256(data).hexdigest()}))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(files={}), "records the files"),
        (lambda d: d["files"].update({"../outside.txt": "0" * 64}), "records the files"),
        (lambda d: d["boosted_config"].update(text_knn_neighbours=[3, 7]), "features"),
        (lambda d: d.update(task="binary"), "two class labels"),
        (lambda d: d["label"].update(class_labels=["a", "b"]), "no class labels"),
        (lambda d: d.update(model_version=12345), "model_version"),
        (lambda d: d.update(attribute_encoder=None), "attribute_encoder"),
        (lambda d: d.update(boosted_config="fast"), "boosted_config"),
    ],
    ids=["no-files", "outside-file", "feature-count", "binary-no-labels", "regression-labels", "version-type",
         "null-encoder", "config-string"],
)
def test_checkpoint_inconsistent_document_rejected(mixed_copy: Path, edit, message: str):
    """A checkpoint.json edited so that its parts no longer fit raises CheckpointError saying what differs."""
    _edit_document(mixed_copy, edit)

    with pytest.raises(CheckpointError, match=message):
        load_boosted_checkpoint(mixed_copy)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "not an .npz archive"), (b"not a zip archive at all", "not an .npz archive")],
    ids=["empty", "garbage"],
)
def test_checkpoint_bad_projections_rejected(mixed_copy: Path, data: bytes, message: str):
    """A projections file that is not an .npz archive raises CheckpointError, even with a matching hash."""
    _replace_file_with_hash(mixed_copy, "projections.npz", data)

    with pytest.raises(CheckpointError, match=message):
        load_boosted_checkpoint(mixed_copy)


def test_checkpoint_truncated_projections_rejected(mixed_copy: Path):
    """A truncated projections archive with a matching hash raises CheckpointError."""
    data = (mixed_copy / "projections.npz").read_bytes()
    _replace_file_with_hash(mixed_copy, "projections.npz", data[: len(data) // 2])

    with pytest.raises(CheckpointError):
        load_boosted_checkpoint(mixed_copy)


def test_tags_split_without_spaces():
    """With the separator "; ", the tag value "A;B" has the tags A and B."""
    encoder = AttributeEncoder([], [], tags={"mechanics": "; "}, min_count=1).fit(
        pd.DataFrame({"mechanics": ["A; B", "B; C"]})
    )

    encoded = encoder.transform([{"mechanics": "A;B"}, {"mechanics": "A; B"}])

    np.testing.assert_array_equal(encoded.numeric[0], encoded.numeric[1])


def test_schema_kind_swap_rejected(mixed_copy: Path):
    """A feature schema that lists a categorical attribute as numeric fails the predictor's start-up check."""
    predictor = load_predictor(mixed_copy)
    encoder = predictor.attribute_encoder
    categorical = [*encoder.categorical, *encoder.tags]
    schema = FeatureSchema(
        numeric_attributes=list(encoder.numeric),
        categorical_attributes=categorical,
        image_model_id=predictor.image_model_id,
        text_model_id=predictor.text_model_id,
        image_embedding_dim=predictor.image_dim,
        text_embedding_dim=predictor.text_dim,
    )
    predictor.feature_schema.update(schema.to_dict())
    assert feature_schema_of(predictor) == schema

    swapped = replace(schema, numeric_attributes=[*schema.numeric_attributes, categorical[0]],
                      categorical_attributes=categorical[1:])
    predictor.feature_schema.update(swapped.to_dict())

    with pytest.raises(SettingsError, match="numeric attributes"):
        feature_schema_of(predictor)


def test_boosted_serving_without_torch(mixed: TrainedBoosted):
    """Loading a boosted checkpoint with the predictor's modules leaves torch unimported."""
    code = (
        "import sys\n"
        "import services.fusion_predictor.server\n"
        "from fusion.loading import load_predictor\n"
        f"load_predictor({str(mixed.checkpoint_dir)!r})\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))\n"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert result.stdout.strip() == "[]"


def test_catboost_prediction_pool_matches_training_pool(mixed: TrainedBoosted):
    """CatBoost predicts from a plain object array exactly what it predicts from the training DataFrame."""
    test = mixed.test
    present = np.ones((TEST_ROWS, 3), dtype=bool)
    present[::4, 0] = False
    present[1::4, 2] = False
    inputs = test.inputs(present)
    encoded = mixed.model.encoder.transform(inputs.attributes)
    x = mixed.model.features.build(encoded, inputs.image, inputs.text, present)  # (B, F)
    member = mixed.model.members["catboost"]
    assert isinstance(member, CatBoostMember)

    expected = np.asarray(member.model.predict(member._pool(x)), dtype=np.float64)

    np.testing.assert_array_equal(member.predict(x), expected)
