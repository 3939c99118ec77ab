"""Small pieces of Dynamic Normalization's forward in torch: the clamp an
activation computes, the batch moments from per-sample ones, and whether
forward hooks watch modules that DN's C++ op runs without calling.

The forward itself is :meth:`DynamicNorm2d.forward
<dn_mmdet.norm.DynamicNorm2d.forward>` over the ops of
:mod:`dn_mmdet.ops.dn_ops`.
"""

import math
from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.module import (
    _global_forward_hooks,
    _global_forward_pre_hooks,
)

#: A clamp's range, ``(lo, hi)``; ``-inf``/``inf`` where it is open.
Bounds = Tuple[float, float]
#: No clamp.
UNBOUNDED: Bounds = (-math.inf, math.inf)

# Exact types: a subclass (of ReLU, say) may compute something else.
_CLAMP_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def clamp_bounds(act: nn.Module) -> Optional[Bounds]:
    """The clamp ``act`` computes, or None if it is not exactly an
    ``nn.ReLU`` (``(0, inf)``), ``nn.ReLU6`` (``(0, 6)``) or
    ``nn.Hardtanh`` (its range)."""
    kind = type(act)
    if kind not in _CLAMP_TYPES:
        return None
    if kind is nn.ReLU:
        return (0.0, math.inf)
    return (float(act.min_val), float(act.max_val))


def batch_moments(mean_nc: Tensor, var_nc: Tensor) -> Tuple[Tensor, Tensor]:
    """Batch mean and biased variance (C,) from per-sample ones (N, C).

    Law of total variance: every sample has the same H*W count, so
    ``Var = mean_n(var_nc) + mean_n((mean_nc - mean)^2)`` (exact, and as
    accurate as its parts: no ``E[x^2] - E[x]^2``).
    """
    mean = mean_nc.mean(0)
    var = var_nc.mean(0) + (mean_nc - mean).pow(2).mean(0)
    return mean, var


def has_forward_hooks(*modules: nn.Module) -> bool:
    """Whether a forward hook (process-wide, or one of ``modules``' own)
    would see one of ``modules`` run: then they must be called, not skipped
    by a fused op."""
    if _global_forward_hooks or _global_forward_pre_hooks:
        return True
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return True
    return False
