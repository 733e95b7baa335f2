"""Tests of the frozen vs fine-tuned comparison CLI: its summary table and its option checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.finetune_compare import main, render_summary


def fold_record(fold: int, frozen: float, tuned: float) -> dict[str, object]:
    return {
        "fold": fold,
        "frozen": {"ridge_image": {"r2": frozen}},
        "fine_tuned": {"ridge_image": {"r2": tuned}},
        "seconds": {"fine_tune": 12.4, "re_embed": 3.0},
        "best_epoch": 1,
    }


def test_summary_pairs_fold_scores() -> None:
    records = [fold_record(0, 0.10, 0.08), fold_record(1, 0.12, 0.11), fold_record(2, 0.11, 0.09)]

    table = render_summary(records, ["ridge_image"], "r2", folds=5)
    lines = table.splitlines()

    assert lines[0].startswith("| model | frozen r2 | fine-tuned r2 | Δr2")
    assert lines[2].startswith("| ridge_image | 0.1100 | 0.0933 | -0.0167 [")
    assert "| 0 | 1 | 12 | 3 | 0.1000 / 0.0800 |" in lines
    assert "| 2 | 1 | 12 | 3 | 0.1100 / 0.0900 |" in lines


def test_summary_of_one_fold_has_no_interval() -> None:
    table = render_summary([fold_record(0, 0.10, 0.08)], ["ridge_image"], "r2", folds=5)
    assert "| ridge_image | 0.1000 | 0.0800 | -0.0200 | |" in table.splitlines()


def test_image_modality_needs_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "--modality", "image", "--out", str(tmp_path / "out")])
    assert "--modality image needs --catalogue" in capsys.readouterr().err


def test_max_folds_below_two_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "--modality", "text", "--max-folds", "1", "--out", str(tmp_path)])
    assert "--max-folds must be in 2..5, got 1" in capsys.readouterr().err


def test_augmented_views_rejected_for_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "--modality", "text", "--augmented-views", "2", "--out", str(tmp_path)])
    assert "--augmented-views applies to --modality image only" in capsys.readouterr().err
