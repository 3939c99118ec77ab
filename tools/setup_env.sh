#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the whole stack.
#
#   bash tools/setup_env.sh           # -> .venv (override with DN_MMDET_VENV)
#
# Idempotent: a stamp records the hash of requirements/ and setup.py, so a
# second call returns at once. mmcv 2.1.0 has no CPU wheel and is compiled
# from source with its ops (about 20 minutes on 2 cores, once: pip caches the
# built wheel). Set TORCH_SPEC (and TORCHVISION_SPEC, its matching
# torchvision) to pick another torch build (the default is the CPU build this
# project is tested with).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DN_MMDET_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The torchvision release made for that torch (mmpretrain imports it).
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}
stamp_of() { cat requirements/*.txt setup.py | sha1sum | cut -d' ' -f1; echo "$TORCH_SPEC $TORCHVISION_SPEC"; }
STAMP="$VENV/.dn_mmdet_env"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_of)" ]; then
  exit 0
fi
echo "[setup_env] creating $VENV (first run compiles mmcv: ~20 min on 2 cores)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# setuptools<82: mmcv's build and mmengine 0.10.7 import pkg_resources.
$PIP install -q -r requirements/build.txt "$TORCH_SPEC"
# --no-deps: the registries' torchvision wheels are CUDA builds that would
# otherwise pull in CUDA torch; dn_mmdet.utils.torchvision_compat makes the
# CPU torch import them.
$PIP install -q --no-deps "$TORCHVISION_SPEC"
# mmcv must see the torch installed above: no build isolation.
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation \
  -r requirements/mminstall.txt -r requirements/runtime.txt -r requirements/tests.txt
$PIP install -q --no-build-isolation --no-deps -e .
# The docs site is built by the test suite (tests/test_docs).
$PIP install -q -r requirements/docs.txt
"$VENV/bin/python" -c "import dn_mmdet, mmcv, mmdet, mmengine, mmpretrain, torch; \
import mmdet.models, mmpretrain.models; from mmcv.ops import nms; \
print('[setup_env] torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, \
'mmengine', mmengine.__version__, 'mmpretrain', mmpretrain.__version__)"
stamp_of > "$STAMP"
