"""Helpers shared by the hooks."""

from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper

from dn_mmdet.norm.base import NormLayer


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP wrapper (names without ``module.``)."""
    return model.module if is_model_wrapper(model) else model


def non_finite_tensors(
    named_tensors: Iterable[Tuple[str, torch.Tensor]],
) -> List[str]:
    """Names of the floating tensors that hold a NaN or Inf, in order.

    Args:
        named_tensors (Iterable[tuple[str, Tensor]]): e.g.
            ``model.named_parameters()``; None values are skipped.
    """
    named = [
        (name, t)
        for name, t in named_tensors
        if t is not None and t.is_floating_point()
    ]
    if not named:
        return []
    # One flag a tensor, read with a single synchronisation.
    flags = [torch.isfinite(t).all() for _, t in named]
    finite = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def describe_tensors(
    model: nn.Module, names: List[str], limit: int = 5
) -> str:
    """Tensor names grouped by the layer holding them, e.g.
    ```backbone.1.dn` (DynamicNorm2d: `bn.running_var`)``.

    A tensor inside a norm layer (DN's statistics child ``bn``) is listed
    under that layer, the one the config created.
    """
    norm_layers = [
        name for name, m in model.named_modules() if isinstance(m, NormLayer)
    ]
    layers: Dict[str, List[str]] = {}
    for name in names:
        owner = name.rpartition('.')[0]
        layer = max(
            (
                n
                for n in norm_layers
                if owner == n or owner.startswith(n + '.')
            ),
            key=len,
            default=owner,
        )
        local = name[len(layer) + 1 :] if layer else name
        layers.setdefault(layer, []).append(local)
    described = [
        f'`{layer or "<model>"}` ({type(model.get_submodule(layer)).__name__}'
        f': {", ".join(f"`{t}`" for t in tensors)})'
        for layer, tensors in list(layers.items())[:limit]
    ]
    more = len(layers) - limit
    return ', '.join(described) + (
        f' and {more} more layer(s)' if more > 0 else ''
    )
