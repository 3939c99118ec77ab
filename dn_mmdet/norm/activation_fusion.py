"""Activation fusion: a clamp (ReLU, ReLU6, Hardtanh) that takes a DN layer's
output moves into the layer, so that DN applies it in its own output pass.

BN needs two passes over the activations (normalise, then clamp); DN with the
clamp fused needs one for both, which pays back DN's pooling pass at inference
and, in training, saves the clamp's forward and backward passes and the output
it keeps. Outputs, gradients and state dicts do not change: a clamp has no
state, and applying it twice equals applying it once.

Which activation follows which DN is read from the model's structure:

* in an mmcv ``ConvModule`` whose ``order`` puts ``act`` right after
  ``norm``, the ``activate`` child becomes ``nn.Identity``;
* in any other module, by tracing its own ``forward`` with ``torch.fx`` (its
  children as leaves): where a DN child's output goes to a clamp child and
  nowhere else, the pair is fused. The clamp may be shared with other call
  sites (ResNet's blocks use one ``relu`` three times), so it stays where it
  is but becomes its ``Fused*`` subclass, which passes through, untouched, an
  input that DN has already clamped to the same range (and that nothing has
  modified since: the tensor's version counter says so). Modules that cannot
  be traced are left as they are.

:func:`fuse_activations` does this for a model; every model that holds DN
layers gets it on its first forward (:func:`fuse_on_first_forward`), unless
``DN_MMDET_FUSED=0``. Caveat, as for any such fusion: a ``ConvModule``
called with ``activate=False`` still gets its clamp once fused.
"""
import inspect
import weakref
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
from mmcv.cnn import ConvModule
from torch import Tensor

from .functional import (OWN_GLOBAL_HOOKS, Bounds, activation_bounds,
                         fused_enabled)

__all__ = [
    'fuse_activations', 'fuse_on_first_forward', 'mark_clamped',
    'FusedReLU', 'FusedReLU6', 'FusedHardtanh'
]


# --------------------------------------------------------------------- #
# The tag on DN's clamped output, and the clamps that honour it
# --------------------------------------------------------------------- #
def mark_clamped(y: Tensor, bounds: Bounds) -> None:
    """Record on ``y`` that it is already clamped to ``bounds`` (as of its
    current version). Tracers and compilers get no tag, nor do tensors of
    ``torch.inference_mode`` (no version counter): their clamp runs."""
    if not (torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling() or y.is_inference()):
        y._dn_clamped = (bounds, y._version)


def _is_clamped(x: Tensor, bounds: Bounds) -> bool:
    return getattr(x, '_dn_clamped', None) == (bounds, x._version)


class _PassesClampedInput:
    """Mixin of the ``Fused*`` clamps: an input DN clamped to this range is
    returned as it is (the clamp would not change it)."""

    def forward(self, x: Tensor) -> Tensor:
        if _is_clamped(x, activation_bounds(self)):
            return x
        return super().forward(x)


class FusedReLU(_PassesClampedInput, nn.ReLU):
    """A ReLU whose DN layer applies it; see :mod:`.activation_fusion`."""


class FusedReLU6(_PassesClampedInput, nn.ReLU6):
    """A ReLU6 whose DN layer applies it; see :mod:`.activation_fusion`."""


class FusedHardtanh(_PassesClampedInput, nn.Hardtanh):
    """A Hardtanh whose DN layer applies it; see :mod:`.activation_fusion`."""


# Exact types only: a subclass of ReLU may compute something else.
_FUSED_CLASS = {nn.ReLU: FusedReLU, nn.ReLU6: FusedReLU6,
                nn.Hardtanh: FusedHardtanh}


# --------------------------------------------------------------------- #
# Finding the (DN, clamp) pairs
# --------------------------------------------------------------------- #
def _can_fuse(dn: nn.Module, layer_type: type) -> bool:
    return isinstance(dn, layer_type) and dn.activation is None


def _conv_module_pair(m: ConvModule, layer_type: type):
    if (m.with_norm and m.with_activation and _can_fuse(m.norm, layer_type)
            and m.order.index('act') == m.order.index('norm') + 1
            and activation_bounds(m.activate) is not None):
        return m.norm, m.activate
    return None


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces a module's own forward: every child is one call."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return True


def _default_arguments(module: nn.Module) -> Dict[str, object]:
    """The forward's arguments with defaults, traced at those values."""
    params = inspect.signature(module.forward).parameters.values()
    return {
        p.name: p.default
        for p in params if p.default is not inspect.Parameter.empty
        and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def _traced_pairs(parent: nn.Module,
                  layer_type: type) -> List[Tuple[nn.Module, nn.Module]]:
    """(DN child, clamp child) pairs of ``parent`` where every call of the
    DN child feeds the same clamp child and nothing else."""
    children = dict(parent.named_children())
    norms = {n for n, m in children.items() if _can_fuse(m, layer_type)}
    clamps = {n for n, m in children.items() if type(m) in _FUSED_CLASS
              or isinstance(m, _PassesClampedInput)}
    if not norms or not clamps:
        return []
    try:
        graph = _ChildrenAsLeaves().trace(
            parent, concrete_args=_default_arguments(parent))
    except Exception:  # noqa: BLE001 - an untraceable forward is left as is
        return []
    consumers = defaultdict(set)
    for node in graph.nodes:
        if node.op != 'call_module' or node.target not in norms:
            continue
        users = list(node.users)
        user = users[0] if len(users) == 1 else None
        if (user is not None and user.op == 'call_module'
                and user.target in clamps and user.args == (node, )
                and not user.kwargs):
            consumers[node.target].add(user.target)
        else:
            consumers[node.target].add(None)
    return [(children[norm], children[clamp])
            for norm, found in consumers.items() if len(found) == 1
            for clamp in found if clamp is not None]


def fuse_activations(module: nn.Module, layer_type: Optional[type] = None
                     ) -> int:
    """Fuse every clamp activation that takes a DN layer's output (and
    only it) into that layer; see :mod:`.activation_fusion`.

    Args:
        module (nn.Module): The model, changed in place.
        layer_type (type): The DN class (subclasses included); by default
            :class:`DynamicNorm2d`.

    Returns:
        int: How many DN layers got their activation.
    """
    if layer_type is None:
        from .dynamic_norm import DynamicNorm2d
        layer_type = DynamicNorm2d
    fused = 0
    for parent in list(module.modules()):
        if isinstance(parent, ConvModule):
            pair = _conv_module_pair(parent, layer_type)
            if pair is not None:
                pair[0].fuse_activation(pair[1])
                parent.activate = nn.Identity()
                fused += 1
            continue
        for dn, clamp in _traced_pairs(parent, layer_type):
            dn.fuse_activation(clamp)
            if not isinstance(clamp, _PassesClampedInput):
                clamp.__class__ = _FUSED_CLASS[type(clamp)]
            fused += 1
    return fused


# --------------------------------------------------------------------- #
# On the first forward
# --------------------------------------------------------------------- #
# DN layers no first forward has looked at yet, and the modules looked at.
_pending: 'weakref.WeakSet[nn.Module]' = weakref.WeakSet()
_looked_at: 'weakref.WeakSet[nn.Module]' = weakref.WeakSet()
_hook_handle = None


def fuse_on_first_forward(layer: nn.Module) -> None:
    """Have the model that holds ``layer`` fused (:func:`fuse_activations`)
    when it is first called, whatever built it: a process-wide forward
    pre-hook sees the outermost module called first (the model), fuses it
    and goes away once no new DN layer waits."""
    global _hook_handle
    _pending.add(layer)
    if _hook_handle is None:
        _hook_handle = torch.nn.modules.module.register_module_forward_pre_hook(
            _before_first_forward)


def is_fusion_hook(hook) -> bool:
    """Whether ``hook`` is this module's (not a user's) global hook."""
    return hook is _before_first_forward


def _before_first_forward(module: nn.Module, args) -> None:
    global _hook_handle
    if module in _looked_at or torch.jit.is_tracing(
    ) or torch.compiler.is_compiling():
        return  # tracers see the model as built; a later eager call fuses
    subtree = list(module.modules())
    if any(m in _pending for m in subtree) and fused_enabled():
        fuse_activations(module)
    for m in subtree:
        _looked_at.add(m)
        _pending.discard(m)
    if not _pending and _hook_handle is not None:
        _hook_handle.remove()
        _hook_handle = None


OWN_GLOBAL_HOOKS.add(_before_first_forward)
