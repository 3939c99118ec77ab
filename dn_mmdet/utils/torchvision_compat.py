"""Let torchvision's Python parts import when its C++ op library cannot load.

mmpretrain 1.2.0 imports torchvision when it is imported (box utilities and
image transforms, all Python). The torchvision release that goes with a CPU
build of torch from PyPI is built against CUDA torch (torchvision 0.28.0 for
torch 2.13.0): beside a CPU torch its op library ``torchvision/_C`` fails to
load. torchvision handles that (``torchvision.extension._has_ops()`` is then
False, and each of its C++ ops raises "Couldn't load custom C++ ops" when
called), except in ``torchvision/_meta_registrations.py``, which registers
fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` whether the
library loaded or not. ``import torchvision``, and with it ``import
mmpretrain``, then fails with "operator torchvision::nms does not exist".

:func:`define_missing_torchvision_ops` declares the schemas of those two ops
(no kernels), which is all that registration needs, when torchvision is
installed, not imported yet, and its op library does not load. Everything
else is left as torchvision made it: its Python functions work, its C++ ops
raise torchvision's own error. With a torchvision whose library loads (a
matching CUDA or CPU pair), nothing is done. ``import dn_mmdet`` applies it,
so a script that imports mmpretrain should import dn_mmdet first (the tools
and the configs' ``custom_imports`` do).
"""
import importlib.machinery
import importlib.util
import os.path as osp
import sys
from typing import Optional

import torch

__all__ = ['define_missing_torchvision_ops']

# Schemas as torchvision's C++ library defines them.
_SCHEMAS = ('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
            'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
# Keeps the definitions alive: a torch.library.Library removes what it
# defined when it is garbage collected.
_library: Optional[torch.library.Library] = None


def _op_library_path() -> Optional[str]:
    """Path of torchvision's ``_C`` extension, or None without torchvision."""
    spec = importlib.util.find_spec('torchvision')
    if spec is None or spec.origin is None:
        return None
    folder = osp.dirname(spec.origin)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = osp.join(folder, f'_C{suffix}')
        if osp.isfile(path):
            return path
    return None


def define_missing_torchvision_ops() -> bool:
    """Declare ``torchvision::nms``/``qnms`` if torchvision cannot load them.

    Returns:
        bool: True if the schemas were declared.
    """
    global _library
    if _library is not None or 'torchvision' in sys.modules:
        return False
    path = _op_library_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(path)
        return False  # the ops are there; torchvision loads them again
    except OSError:
        pass
    library = torch.library.Library('torchvision', 'DEF')
    for schema in _SCHEMAS:
        library.define(schema)
    _library = library
    return True


define_missing_torchvision_ops()
