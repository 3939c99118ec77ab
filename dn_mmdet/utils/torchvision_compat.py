"""Make torchvision importable beside a CPU-only torch.

mmpretrain (stage 1) imports torchvision for its transforms. The package
registries this project installs from carry only the CUDA build of
torchvision, whose C++ extension (``torchvision/_C.so``) links
``libc10_cuda.so`` and cannot load beside the CPU build of torch. torchvision
0.28 tolerates a missing extension everywhere but in
``torchvision/_meta_registrations.py``, which registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally, so
``import torchvision`` (and with it ``import mmpretrain.models``) fails with
"operator torchvision::nms does not exist".

When, and only when, the extension cannot be loaded, :func:`define_missing_ops`
declares the schemas of those two operators (no kernels), so torchvision's
pure-Python parts import and work, and calling one of its C++ ops still raises
torchvision's own "Couldn't load custom C++ ops" error. Nothing in dn_mmdet or
mmpretrain's classification path calls them (mmdet uses mmcv's ops).

Importing this module does nothing; ``import dn_mmdet`` calls
:func:`define_missing_ops` before it imports mmdet's models. That call
cannot be left to the tools or the runtime configs as the safe checkpoint
loader is: registering dn_mmdet's modules imports ``mmdet.models`` (the
SSDLite head subclasses its ``SSDHead``), which fails in such an environment
("operator torchvision::nms does not exist", also for a bare
``import mmdet.models``), and a config's ``custom_imports`` imports dn_mmdet
before any hook of the run exists. Where torchvision's extension loads, the
call declares nothing.
"""

import glob
import importlib.util
import os.path as osp
import sys
from typing import Optional

import torch

__all__ = ['define_missing_ops']

# The operators torchvision/_meta_registrations.py registers fakes for
# without checking that its extension loaded (torchvision 0.28).
_SCHEMAS = (
    'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor',
)

# Held for the life of the process: a Library deregisters its ops when
# garbage-collected.
_library: Optional[torch.library.Library] = None


def _extension_loads(package_dir: str) -> bool:
    libs = glob.glob(osp.join(package_dir, '_C.*so'))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return True


def define_missing_ops() -> bool:
    """Declare torchvision's NMS operators if its extension cannot load.

    Idempotent; does nothing if torchvision is not installed, is already
    imported, or has a working extension.

    Returns:
        bool: Whether the operators were declared (now or before).
    """
    global _library
    if _library is not None:
        return True
    if 'torchvision' in sys.modules:
        return False
    spec = importlib.util.find_spec('torchvision')
    if spec is None or spec.origin is None:
        return False
    if _extension_loads(osp.dirname(spec.origin)):
        return False
    _library = torch.library.Library('torchvision', 'DEF')
    for schema in _SCHEMAS:
        _library.define(schema)
    return True
