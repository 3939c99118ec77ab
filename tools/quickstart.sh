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
# thread it waits for needs: with libgomp's default spin, and with bounded
# spins of 10^4 and 10^5 (GOMP_SPINCOUNT), training iterations were several
# times slower than with threads that sleep at once, in alternating runs. On
# an idle machine sleeping costs a fraction of an iteration instead, so
# sleeping is the default; set OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself
# (e.g. GOMP_SPINCOUNT=300000, libgomp's own default, on a machine nothing
# else uses) to override.
if [[ -z ${OMP_WAIT_POLICY:-} && -z ${GOMP_SPINCOUNT:-} ]]; then
  export OMP_WAIT_POLICY=PASSIVE
fi

bash tools/setup_env.sh
PY="$VENV/bin/python"
start=$(date +%s)
"$PY" tools/misc/make_shapes_dataset.py --out data/shapes
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
  --out "$WORK_DIR/test/predictions.pkl"
echo "quickstart: $(basename "$CONFIG" .py) trained and evaluated in" \
  "$(( $(date +%s) - start )) s; checkpoint $CKPT"
