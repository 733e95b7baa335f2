import pytest
import torch

from fusion.model import ConcatFusionModel, FusionConfig


def _config(**overrides: object) -> FusionConfig:
    values: dict[str, object] = {
        "image_dim": 10,
        "text_dim": 7,
        "numeric_dim": 4,
        "categorical_cardinalities": [5, 3],
        "hidden_dim": 16,
        "modality_dim": 8,
        "categorical_embedding_dim": 4,
    }
    values.update(overrides)
    return FusionConfig(**values)


def _inputs(batch: int, config: FusionConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(batch, config.image_dim, generator=generator),
        "text": torch.randn(batch, config.text_dim, generator=generator),
        "numeric": torch.randn(batch, config.numeric_dim, generator=generator),
        "categorical": torch.stack(
            [torch.randint(0, c, (batch,), generator=generator) for c in config.categorical_cardinalities], dim=1
        ),
        "present": torch.rand(batch, 3, generator=generator) > 0.3,
    }


def test_forward_shape_with_missing():
    config = _config()
    model = ConcatFusionModel(config).eval()
    inputs = _inputs(9, config)
    inputs["present"][0] = torch.tensor([False, False, False])
    inputs["present"][1] = torch.tensor([True, False, True])

    output = model(**inputs)

    assert output.shape == (9, 1)
    assert torch.isfinite(output).all()


def test_missing_modality_ignores_input():
    config = _config()
    model = ConcatFusionModel(config).eval()
    inputs = _inputs(4, config)
    inputs["present"][:] = torch.tensor([False, True, True])

    before = model(**inputs)
    inputs["image"] = torch.full_like(inputs["image"], float("nan"))
    after = model(**inputs)

    torch.testing.assert_close(before, after)


def test_nan_absent_rows_keep_gradients_finite():
    config = _config(modality_dropout=0.0)
    model = ConcatFusionModel(config).train()
    inputs = _inputs(6, config)
    inputs["present"][:, 1] = False
    inputs["text"][:] = float("nan")

    model(**inputs).sum().backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_present_modality_changes_output():
    config = _config()
    model = ConcatFusionModel(config).eval()
    inputs = _inputs(4, config)
    inputs["present"][:] = True

    with torch.no_grad():
        model.missing_vectors.normal_()
    full = model(**inputs)
    inputs["present"][:, 0] = False
    without_image = model(**inputs)

    assert not torch.allclose(full, without_image)


def test_eval_is_deterministic():
    config = _config(dropout=0.5, modality_dropout=0.5)
    model = ConcatFusionModel(config).eval()
    inputs = _inputs(16, config)

    torch.testing.assert_close(model(**inputs), model(**inputs))


def test_modality_dropout_in_training():
    config = _config(dropout=0.0, modality_dropout=0.9)
    model = ConcatFusionModel(config).train()
    with torch.no_grad():
        model.missing_vectors.normal_()
    inputs = _inputs(64, config)
    inputs["present"][:] = True

    torch.manual_seed(0)
    first = model(**inputs)
    torch.manual_seed(1)
    second = model(**inputs)

    assert not torch.allclose(first, second)


def test_categorical_only_attributes():
    config = _config(numeric_dim=0)
    model = ConcatFusionModel(config).eval()
    inputs = _inputs(3, config)

    assert model(**inputs).shape == (3, 1)


def test_wrong_shape_raises():
    config = _config()
    model = ConcatFusionModel(config)
    inputs = _inputs(3, config)
    inputs["text"] = torch.randn(3, config.text_dim + 1)

    with pytest.raises(ValueError, match="'text' has shape"):
        model(**inputs)


def test_config_dict_round_trip():
    config = _config(task="binary")

    assert FusionConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "multiclass"}, "not supported"),
        ({"image_dim": 0}, "image_dim"),
        ({"numeric_dim": 0, "categorical_cardinalities": []}, "no attribute inputs"),
        ({"dropout": 1.0}, "dropout"),
        ({"categorical_cardinalities": [0]}, "cardinalities"),
    ],
)
def test_config_rejects_invalid(overrides: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)
