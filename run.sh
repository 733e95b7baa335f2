#!/usr/bin/env bash
# Install the project into .venv (first run only), then run the main job with these options:
#   ./run.sh                                   generated sample catalogue, embedded SQLite store
#   ./run.sh --catalogue ../shared/datasets/boardgames --online-store redis
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh
exec .venv/bin/python -m training.pipeline "$@"
