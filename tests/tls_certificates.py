"""Throwaway certificates for the TLS tests, made by scripts/make_dev_certs.py in a temporary folder.

Test modules call `make_test_certificates` from a module-scoped fixture, so no key is ever
committed and each module signs its own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_MODULE_NAME = "make_dev_certs"
# Names that the test servers are reached by.
SERVER_NAMES = ("localhost", "127.0.0.1")


def _load_script() -> ModuleType:
    # scripts/ is a folder of scripts, not a package, so the module is loaded from its file. It is
    # registered in sys.modules first, because its dataclass looks its own module up there.
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, REPO_ROOT / "scripts" / "make_dev_certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def make_test_certificates(directory: Path, server_names: tuple[str, ...] = SERVER_NAMES) -> Any:
    """Write a CA, server and client certificates and an unrelated CA's client into `directory`.

    Returns the script's `DevCertificates` with the paths.
    """
    return _load_script().make_certificates(directory, server_names, days=1)
