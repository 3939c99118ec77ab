#!/usr/bin/env bash
# Distributed testing with torchrun (one process per GPU, or per CPU slot on
# a machine without CUDA, where tools/test.py switches to the gloo backend).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
#
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT (as in mmdet).
# TORCHRUN overrides the launcher command (default: torchrun on PATH).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
TORCHRUN=${TORCHRUN:-torchrun}

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
$TORCHRUN \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
