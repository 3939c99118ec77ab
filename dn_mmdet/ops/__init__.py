"""DN's operators (``torch.ops.dn_mmdet.*``) and the loader of their C++
kernel, in one place (as mmcv's ``ops``); see :mod:`.dn_ops`.

The C++ kernel (``csrc/dn_cpu.cpp``) is compiled when the package is
installed, else on first use (see :mod:`.ext_loader`); where neither works,
DN warns once and uses the composite ops.
"""

from .dn_ops import (
    COMPOSITE_FUNCTIONS,
    CPU_OP_DTYPES,
    cpu_ops_available,
    dn_cpu,
    load_cpu_ops,
)
from .ext_loader import CompiledExtension

__all__ = [
    'dn_cpu',
    'CompiledExtension',
    'COMPOSITE_FUNCTIONS',
    'CPU_OP_DTYPES',
    'cpu_ops_available',
    'load_cpu_ops',
]
