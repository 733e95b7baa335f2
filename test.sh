#!/usr/bin/env bash
# Install the project into .venv (first run only) and run the test suite; options go to pytest.
# The tests need Redis on 127.0.0.1:6379 (PQ_TEST_REDIS) and read real data from
# PQ_DATASETS_DIR (default: ../shared/datasets).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh
export PQ_DATASETS_DIR=${PQ_DATASETS_DIR:-$(cd .. && pwd)/shared/datasets}
exec .venv/bin/python -m pytest "$@"
