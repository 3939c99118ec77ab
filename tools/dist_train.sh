#!/usr/bin/env bash
# Distributed training with torch's launcher (one process per GPU, or per CPU
# slot on a machine without CUDA, where tools/train.py switches to gloo).
#
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py args...]
#
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT (as in mmdet).
# Runs with the project's environment (DN_MMDET_VENV, default .venv) when
# there is one, else with python3: no need to activate it first.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
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
    "$REPO/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
