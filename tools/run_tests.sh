#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite.
#
#   bash tools/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
VENV=${DN_MMDET_VENV:-.venv}
exec "$VENV/bin/python" -m pytest tests "$@"
