import numpy as np
import pytest
import torch

from fusion.batch import FusionBatch
from fusion.inference import FusionInputs, FusionPredictor


def _inputs(predictor: FusionPredictor, make_inputs, n: int = 32, seed: int = 0) -> FusionInputs:
    image, text, rows = make_inputs(n, seed)
    inputs = FusionInputs.from_optional(
        list(image), list(text), rows, image_dim=predictor.image_dim, text_dim=predictor.text_dim
    )
    # Every combination of present modalities, repeated over the batch.
    pattern = np.array([[(k >> m) & 1 for m in range(3)] for k in range(8)], dtype=bool)
    present = np.resize(pattern, (n, 3))
    return FusionInputs(image=inputs.image, text=inputs.text, attributes=inputs.attributes, present=present)


def _direct_prediction(predictor: FusionPredictor, inputs: FusionInputs) -> np.ndarray:
    """Return the model's prediction in label units from a plain forward pass, one product at a time."""
    encoded = predictor.attribute_encoder.transform(inputs.attributes)
    batch = FusionBatch.from_numpy(inputs.image, inputs.text, encoded, inputs.present)
    with torch.no_grad():
        outputs = torch.cat([batch.select(torch.tensor([i])).run(predictor.model) for i in range(len(batch))])
    return predictor.metadata.label_scaling.to_label_units(outputs.double().numpy())


@pytest.mark.parametrize("task", ["regression", "binary"])
def test_shapley_sums_to_difference(make_checkpoint, make_inputs, task):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(task), device="cpu")
    predictions = predictor.predict(_inputs(predictor, make_inputs))

    total = predictions.contributions.sum(axis=1)
    np.testing.assert_allclose(total, predictions.quality - predictions.baseline, rtol=0, atol=1e-6)
    assert np.abs(predictions.contributions).max() > 1e-3  # the check above is not trivially 0 = 0


def test_absent_modality_gets_zero(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs)
    predictions = predictor.predict(inputs)

    assert np.all(predictions.contributions[~inputs.present] == 0.0)
    assert np.all(predictions.contributions[inputs.present] != 0.0)


def test_quality_matches_forward(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs)
    predictions = predictor.predict(inputs)

    np.testing.assert_allclose(predictions.quality, _direct_prediction(predictor, inputs), rtol=0, atol=1e-5)


def test_baseline_is_all_missing(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs)
    predictions = predictor.predict(inputs)
    nothing = FusionInputs(
        image=inputs.image, text=inputs.text, attributes=inputs.attributes, present=np.zeros_like(inputs.present)
    )

    np.testing.assert_allclose(predictions.baseline, _direct_prediction(predictor, nothing), rtol=0, atol=1e-5)
    np.testing.assert_allclose(predictions.baseline, predictions.baseline[0], rtol=0, atol=1e-5)


def test_binary_probabilities(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint("binary"), device="cpu")
    predictions = predictor.predict(_inputs(predictor, make_inputs))

    assert predictions.class_probabilities is not None
    assert predictions.class_probabilities.shape == (32, 2)
    np.testing.assert_allclose(predictions.class_probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(predictions.class_probabilities[:, 1], predictions.quality)
    assert np.all((predictions.quality > 0) & (predictions.quality < 1))


def test_regression_has_no_class_probabilities(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    predictions = predictor.predict(_inputs(predictor, make_inputs, n=4))

    assert predictions.class_probabilities is None
    assert predictions.quality.dtype == np.float64


def test_chunks_match_single_pass(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs)
    whole = predictor.predict(inputs)
    chunked = predictor.predict(inputs, chunk_size=5)

    np.testing.assert_allclose(whole.quality, chunked.quality, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole.contributions, chunked.contributions, rtol=0, atol=1e-6)


def test_predict_is_deterministic(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs)

    np.testing.assert_array_equal(predictor.predict(inputs).quality, predictor.predict(inputs).quality)


def test_from_optional_marks_missing(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    image, text, rows = make_inputs(4)
    inputs = FusionInputs.from_optional(
        [image[0], None, image[2], None],
        [None, text[1], text[2], None],
        [rows[0], {"price": None}, None, {"price": float("nan"), "category": "a"}],
        image_dim=predictor.image_dim,
        text_dim=predictor.text_dim,
    )

    assert inputs.present.tolist() == [[True, False, True], [False, True, False], [True, True, False], [False, False, True]]
    assert np.all(inputs.image[1] == 0.0)
    predictions = predictor.predict(inputs)
    assert np.isfinite(predictions.quality).all()


def test_from_optional_wrong_dim_raises():
    with pytest.raises(ValueError, match="row 0 has shape"):
        FusionInputs.from_optional([np.zeros(3)], [None], [None], image_dim=4, text_dim=2)


def test_present_attributes_without_row_raises(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs, n=2)
    inputs = FusionInputs(
        image=inputs.image, text=inputs.text, attributes=[None, None], present=np.ones((2, 3), dtype=bool)
    )

    with pytest.raises(ValueError, match="no attribute row"):
        predictor.predict(inputs)


def test_present_nan_embedding_raises(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs, n=8)
    inputs.image[7, 0] = np.nan  # row 7 has every modality present

    with pytest.raises(ValueError, match=r"rows \[7\]"):
        predictor.predict(inputs)


def test_wrong_embedding_dim_raises(make_checkpoint, make_inputs):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint(), device="cpu")
    inputs = _inputs(predictor, make_inputs, n=2)
    inputs = FusionInputs(
        image=np.zeros((2, 3), dtype=np.float32), text=inputs.text, attributes=inputs.attributes, present=inputs.present
    )

    with pytest.raises(ValueError, match="Image embeddings have shape"):
        predictor.predict(inputs)


def test_metadata_properties(make_checkpoint):
    predictor = FusionPredictor.from_checkpoint(make_checkpoint("binary"), device="cpu")

    assert predictor.model_version == "test-binary"
    assert predictor.label_name == "is_good"
    assert predictor.task == "binary"
    assert predictor.class_labels == ["0", "1"]
    assert predictor.attribute_columns == ["price", "players", "category"]
    assert predictor.device == torch.device("cpu")
