import numpy as np
import pytest

from fusion.labels import LabelScaling


def test_regression_round_trip():
    labels = np.array([4.0, 6.0, 8.0, 10.0])
    scaling = LabelScaling.fit("regression", labels)
    targets = scaling.to_model_targets(labels)

    assert targets.mean() == pytest.approx(0.0, abs=1e-6)
    assert targets.std() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(scaling.to_label_units(targets), labels, rtol=1e-6)


def test_binary_sigmoid():
    scaling = LabelScaling.fit("binary", np.array([0.0, 1.0, 1.0]))

    assert scaling.mean == 0.0
    assert scaling.std == 1.0
    np.testing.assert_allclose(scaling.to_label_units(np.array([0.0, 1000.0, -1000.0])), [0.5, 1.0, 0.0])


def test_constant_labels_unit_std():
    scaling = LabelScaling.fit("regression", np.array([3.0, 3.0]))

    assert scaling.std == 1.0


def test_fit_rejects_invalid():
    with pytest.raises(ValueError, match="NaN or infinite"):
        LabelScaling.fit("regression", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="0 or 1"):
        LabelScaling.fit("binary", np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        LabelScaling.fit("regression", np.array([]))
    with pytest.raises(ValueError, match="positive std"):
        LabelScaling("regression", mean=0.0, std=0.0)
