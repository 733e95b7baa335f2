"""The pq.v1 protos pass buf's STANDARD and COMMENTS lint rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _buf_binary() -> str:
    beside_python = Path(sys.executable).parent / "buf"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("buf")
    if found is None:
        pytest.fail("buf not found; install the buf-bin package from requirements.txt")
    return found


def test_protos_pass_buf_lint() -> None:
    result = subprocess.run(
        [_buf_binary(), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
