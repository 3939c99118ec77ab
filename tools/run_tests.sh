#!/usr/bin/env bash
# Set up the environment if needed, check lint and format, then run the
# whole test suite on two worker processes.
#
#   bash tools/run_tests.sh [pytest args]    # e.g. -k dist, -n 4, -n 0
#
# The lint gate runs first and has no switch; most findings are fixed by
#   .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
VENV=${DN_MMDET_VENV:-.venv}
PY="$VENV/bin/python"
# ruff.toml holds the rules; both read the whole tree (less .gitignore's).
"$PY" -m ruff check .
"$PY" -m ruff format --check .
# Two workers (pytest-xdist): the machine class has two cores and the
# tests run one thread a process (tests/conftest.py). A module's tests stay
# on one worker (loadscope), so a module-scoped fixture, such as one
# training run that several tests read, is built once. A later -n in the
# arguments wins (-n 0: no workers). The ten slowest tests are listed
# above the summary line, so that a test that grows slow shows in CI's log.
exec "$PY" -m pytest tests -n 2 --dist loadscope --no-loadscope-reorder \
  --durations=10 "$@"
