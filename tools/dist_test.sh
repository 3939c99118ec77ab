#!/usr/bin/env bash
# Distributed testing with torch's launcher (one process per GPU, or per CPU
# slot on a machine without CUDA, where tools/test.py switches to gloo).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
#
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT (as in mmdet).
# Runs with the project's environment (DN_MMDET_VENV, default .venv) when
# there is one, else with python3: no need to activate it first.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV=${DN_MMDET_VENV:-.venv}
case $VENV in /*) ;; *) VENV="$REPO/$VENV" ;; esac  # as tools/setup_env.sh
PYTHON=python3
if [ -x "$VENV/bin/python" ]; then PYTHON="$VENV/bin/python"; fi

PYTHONPATH="$REPO":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$GPUS" \
    --master_port="${PORT:-29500}" \
    "$REPO/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
