"""The boosted head in the cross-validation harness, the missing-modality table and the bounded search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fusion.boosted.config import BoostedConfig
from training.boosted_head import BoostedHeadModel
from training.cv import make_folds
from training.experiment import MODELS, evaluate_models
from training.experiment_report import render_missing_table
from training.search import SEARCH_SPACE, candidate, draw_changes
from training.search import main as search_main

FAST = BoostedConfig(max_trees=200, early_stopping_rounds=20, threads=1, text_knn_neighbours=(3,), projection_folds=3)


@pytest.fixture
def fast_boosted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the harness's fusion_boosted model use small settings."""
    monkeypatch.setitem(MODELS, "fusion_boosted", lambda seed: BoostedHeadModel(FAST, seed=seed))


def test_boosted_head_learns_planted_signal(regression_data):
    train, test = regression_data.take(np.arange(240)), regression_data.take(np.arange(240, 300))
    model = BoostedHeadModel(FAST)

    model.fit(train)
    predicted = model.predict(test)

    assert np.corrcoef(predicted, test.labels)[0, 1] > 0.5


def test_without_modality_blanks_only_it(regression_data):
    without_image = regression_data.without("image")
    without_attributes = regression_data.without("attributes")

    assert np.isnan(without_image.image).all()
    assert not np.isnan(without_image.text).any()
    assert without_attributes.attributes.isna().all().all()
    assert list(without_attributes.attributes.columns) == list(regression_data.attributes.columns)
    with pytest.raises(ValueError, match="modality must be"):
        regression_data.without("audio")


def test_missing_table_lists_fusion_heads(regression_data, fast_boosted):
    folds = make_folds(regression_data.labels, folds=3, repeats=1, seed=0)

    result = evaluate_models(regression_data, ["fusion_boosted", "ridge_text"], folds)
    table = render_missing_table(result)

    assert set(result.without) == {"fusion_boosted"}
    assert set(result.without["fusion_boosted"]) == {"image", "text", "attributes"}
    assert not np.isnan(result.without["fusion_boosted"]["image"]).any()
    assert "| fusion_boosted |" in table
    assert "ridge_text" not in table


def test_search_candidate_applies_dotted_changes():
    config = candidate(BoostedConfig().to_dict(), {"lightgbm.num_leaves": 7, "modality_dropout": 0.2})

    assert config.lightgbm.num_leaves == 7
    assert config.modality_dropout == 0.2
    assert config.catboost == BoostedConfig().catboost


def test_search_draws_are_reproducible():
    first = draw_changes(np.random.default_rng(3), 2)
    second = draw_changes(np.random.default_rng(3), 2)

    assert first == second
    assert len(first) == 2
    assert set(first) <= set(SEARCH_SPACE)


def test_search_stops_at_candidate_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, regression_data):
    monkeypatch.setattr("training.search.load_experiment_data", lambda run_dir, **options: regression_data)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(FAST.to_dict()))

    search_main([
        "--run-dir", str(tmp_path), "--base-config", str(base), "--out", str(tmp_path / "out"),
        "--max-candidates", "2", "--folds", "3",
    ])

    records = json.loads((tmp_path / "out" / "search.json").read_text())
    best = BoostedConfig.from_dict(yaml.safe_load((tmp_path / "out" / "best.yaml").read_text()))
    assert [record["candidate"] for record in records] == [0, 1]
    assert records[0]["changes"] == {}
    assert records[0]["config"] == FAST.to_dict()
    assert best.to_dict() in [record["config"] for record in records]
