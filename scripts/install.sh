#!/usr/bin/env bash
# Create .venv (if missing), install the pinned dependencies and the project, and generate the
# gRPC code from protos/. Re-running it is cheap: pip is skipped while requirements.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.requirements.sha256
wanted=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "install: installing requirements into .venv (the first time this downloads several GB)"
  .venv/bin/pip install --quiet -r requirements.txt
fi

# Generate before the editable install so the generated package pq is found by it. The code is
# regenerated only when a .proto file is newer than it.
if [ ! -f pq/v1/__init__.py ] || [ -n "$(find protos -name '*.proto' -newer pq/v1/__init__.py)" ]; then
  .venv/bin/python scripts/gen_protos.py
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  # Compat mode puts the repository root on sys.path, so packages added later import too.
  .venv/bin/pip install --quiet --no-deps -e . --config-settings editable_mode=compat
  echo "$wanted" > "$stamp"
fi
