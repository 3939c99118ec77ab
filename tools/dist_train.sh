#!/usr/bin/env bash
# Distributed training with torchrun (one process per GPU, or per CPU slot on
# a machine without CUDA, where tools/train.py switches to the gloo backend).
#
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py args...]
#
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT (as in mmdet).
# TORCHRUN overrides the launcher command (default: torchrun on PATH).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
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
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
