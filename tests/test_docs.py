"""Documentation that is generated or quoted by CI stays in step with the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_settings_doc():
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_current() -> None:
    settings_doc = _load_settings_doc()

    written = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

    assert written == settings_doc.render(), "docs/configuration.md is stale: run python scripts/settings_doc.py"


def test_readme_first_block_has_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```[a-z]*\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None

    commands = [line for line in first_block.group(1).splitlines() if line.strip() and not line.startswith("#")]

    assert commands == ["./run.sh", "./test.sh"]


def test_ci_runs_readme_test_command() -> None:
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

    assert re.search(r"^\./test\.sh\b", ci_script, re.MULTILINE)
