#!/usr/bin/env bash
# The main job: set up, write the embedded shapes dataset, train SSDLite with
# a MobileNetV2-DN backbone on the CPU, evaluate it, print COCO bbox mAP.
#
#   bash tools/quickstart.sh [CONFIG]
#
# CONFIG defaults to the DN-B (r=16, g=oup) shapes config; pass the BN one
# (configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py) to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py}
WORK_DIR=${WORK_DIR:-work_dirs/quickstart/$(basename "$CONFIG" .py)}
VENV=${DN_MMDET_VENV:-.venv}
# torch's OpenMP threads (one a core) spin while they wait for each other.
# On a machine that other work keeps busy, a spinning thread holds a core the
# thread it waits for needs (libgomp's default spin, and bounded spins of
# 10^4 and more, made training iterations several times slower there);
# threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) cost a third of an
# iteration on an idle machine instead. A short bounded spin keeps most of
# the idle machine's speed and costs about a fifth where one other process
# keeps a core busy (docs/en/get_started.md gives the alternating runs). Set OMP_WAIT_POLICY
# or GOMP_SPINCOUNT yourself to override.
if [[ -z ${OMP_WAIT_POLICY:-} && -z ${GOMP_SPINCOUNT:-} ]]; then
  export GOMP_SPINCOUNT=1000
fi

bash tools/setup_env.sh
PY="$VENV/bin/python"
# As many torch threads as the cores other processes leave idle now (at
# least one): a thread that shares its core with a busy process stalls every
# parallel region (docs/en/get_started.md has the measurements).
if [[ -z ${OMP_NUM_THREADS:-} ]]; then
  OMP_NUM_THREADS=$("$PY" -c \
    'from dn_mmdet.utils.launch import idle_cores; print(idle_cores())')
  export OMP_NUM_THREADS
  echo "quickstart: $OMP_NUM_THREADS torch thread(s), one a core idle now" \
    "(set OMP_NUM_THREADS to choose)"
fi
start=$(date +%s)
"$PY" tools/misc/make_shapes_dataset.py --out data/shapes
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
  --out "$WORK_DIR/test/predictions.pkl"
echo "quickstart: $(basename "$CONFIG" .py) trained and evaluated in" \
  "$(( $(date +%s) - start )) s; checkpoint $CKPT"
