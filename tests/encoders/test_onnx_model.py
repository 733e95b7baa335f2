"""Tests of encoders.onnx_model and encoders.runtime on a small linear module, exported for real."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.onnx_model import (
    OnnxModel,
    check_against_reference,
    create_session,
    load_onnx_model,
    onnx_cache_path,
)
from encoders.runtime import EmbeddingTolerance, InferenceRuntimeError, available_cores, check_threads

TOLERANCE = EmbeddingTolerance(absolute=1e-5, relative=0.0)


def linear_module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3).eval()


def load(module: torch.nn.Module, path: Path, threads: int | None = None) -> OnnxModel:
    example = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))  # (2, 4)
    return load_onnx_model(
        module,
        (example,),
        path,
        input_names=("inputs",),
        output_name="outputs",
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        tolerance=TOLERANCE,
        device=torch.device("cpu"),
        threads=threads,
        setting="test model runtime 'onnx'",
    )


def test_export_runs_dynamic_batch(tmp_path: Path) -> None:
    module = linear_module(0)
    model = load(module, tmp_path / "linear.onnx")
    inputs = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)  # (5, 4)

    outputs = model.run({"inputs": inputs})

    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).numpy()
    assert outputs.shape == (5, 3)
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    assert model.providers[0] == "CPUExecutionProvider"
    assert model.device == torch.device("cpu")
    assert [path.name for path in tmp_path.iterdir()] == ["linear.onnx"]


def test_corrupt_cache_exported_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "linear.onnx"
    path.write_bytes(b"a truncated download" * 3)

    with caplog.at_level(logging.WARNING, logger="encoders.onnx_model"):
        model = load(linear_module(0), path)

    assert "exporting it again" in caplog.text
    assert model.run({"inputs": np.zeros((1, 4), dtype=np.float32)}).shape == (1, 3)


def test_stale_cache_exported_again(tmp_path: Path) -> None:
    # A cached export of other weights under this name fails the reference check and is replaced.
    path = tmp_path / "linear.onnx"
    load(linear_module(0), path)
    module = linear_module(1)

    model = load(module, path)

    inputs = np.ones((2, 4), dtype=np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(model.run({"inputs": inputs}), expected, atol=1e-6)


def test_reference_mismatch_raises(tmp_path: Path) -> None:
    model = load(linear_module(0), tmp_path / "linear.onnx")
    example = torch.randn(2, 4)

    with pytest.raises(InferenceRuntimeError, match=r"differs from the torch reference in rows \[0, 1\]"):
        check_against_reference(model, linear_module(1), (example,), ("inputs",), TOLERANCE)


def test_unreadable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"garbage")

    with pytest.raises(InferenceRuntimeError, match="test model runtime 'onnx': onnxruntime failed to load"):
        create_session(path, device=torch.device("cpu"), threads=1, setting="test model runtime 'onnx'")


def test_session_threads(tmp_path: Path) -> None:
    path = tmp_path / "linear.onnx"
    load(linear_module(0), path)

    single_thread = create_session(path, device=torch.device("cpu"), threads=1, setting="test")
    default = create_session(path, device=torch.device("cpu"), threads=None, setting="test")

    assert single_thread._session.get_session_options().intra_op_num_threads == 1
    assert default._session.get_session_options().intra_op_num_threads == available_cores()


def test_cache_path_differs_per_weights(tmp_path: Path) -> None:
    assert onnx_cache_path(tmp_path, "m", "0" * 64) != onnx_cache_path(tmp_path, "m", "1" + "0" * 63)


def test_tolerance_absolute() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # (2, 2)
    actual = reference + np.array([[5e-5, 0.0], [0.0, 2e-4]], dtype=np.float32)

    assert EmbeddingTolerance(absolute=1e-4, relative=0.0).violations(actual, reference) == [1]


def test_tolerance_relative_to_row_max() -> None:
    reference = np.array([[6.0, 0.0], [0.01, 0.0]], dtype=np.float32)  # (2, 2)
    actual = reference + np.float32(3e-4)

    # Row 0 allows 1e-4 * 6 = 6e-4, and row 1 allows 1e-4 * 0.01 = 1e-6.
    assert EmbeddingTolerance(absolute=0.0, relative=1e-4).violations(actual, reference) == [1]


def test_tolerance_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="compared with a reference of shape"):
        TOLERANCE.violations(np.zeros((2, 3)), np.zeros((3, 3)))


@pytest.mark.parametrize("threads", [None, 1, 16])
def test_check_threads_accepts(threads: int | None) -> None:
    assert check_threads(threads) == threads


@pytest.mark.parametrize("threads", [0, -1, True, 2.0, "2"])
def test_check_threads_rejects(threads: object) -> None:
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        check_threads(threads)  # type: ignore[arg-type]
