"""Fusing a clamp activation into the DN layer before it: an explicit
transform of a model, as mmcv's ``fuse_conv_bn``.

BN needs two passes over the activations (normalise, then clamp); DN with
the clamp fused needs one for both (:meth:`DynamicNorm2d.forward_clamped`),
which pays back DN's pooling pass. :func:`fuse_norm_act` replaces each mmcv
``ConvModule`` whose DN layer feeds its clamp by a
:class:`FusedNormActConvModule` sharing its children: the module tree,
the state-dict keys and every output and gradient stay as they were.

Only what is provably the same function is fused:

* the ``ConvModule`` is exactly that class (a subclass may compute
  otherwise), without hooks or a replaced ``forward``, and appears once in
  the model;
* its norm is exactly a :class:`DynamicNorm2d`, and its activation exactly an
  ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh`` (a subclass with its own
  ``forward`` is not a clamp), neither used anywhere else in the model
  (a DN or a clamp shared by two parents stays as it is), and ``order``
  puts the activation right after the norm.

A fused module still decides on every call: ``activate=False`` or
``norm=False``, a forward hook on its norm or activation (or a process-wide
one), or children replaced since, and it runs the ``ConvModule``'s own
forward, unfused.
"""

import copy
from collections import Counter
from typing import Optional

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.registry import MODELS
from torch import Tensor

from .dynamic_norm import DynamicNorm2d
from .functional import Bounds, clamp_bounds, has_forward_hooks

__all__ = ['FusedNormActConvModule', 'fuse_norm_act']


@MODELS.register_module()
class FusedNormActConvModule(ConvModule):
    """A ``ConvModule`` (conv, DN, clamp) whose DN layer applies the clamp
    in its output pass. Made by :func:`fuse_norm_act` from a
    ``ConvModule``, sharing its children (same keys, same parameters).

    ``forward(x, activate=True, norm=True)`` computes exactly what
    ``ConvModule.forward`` computes: with both flags set, no forward hooks
    on the norm or the activation and the children still a
    :class:`DynamicNorm2d` and an exact clamp type, the norm and the clamp
    are one call of :meth:`DynamicNorm2d.forward_clamped`; otherwise the
    ``ConvModule``'s own forward runs.
    """

    def forward(
        self, x: Tensor, activate: bool = True, norm: bool = True
    ) -> Tensor:
        bounds = self._fused_bounds() if activate and norm else None
        if bounds is None:
            return super().forward(x, activate, norm)
        for layer in self.order:
            if layer == 'conv':
                if self.with_explicit_padding:
                    x = self.padding_layer(x)
                x = self.conv(x)
            elif layer == 'norm':
                x = self.norm.forward_clamped(x, bounds)
            # 'act': applied by the norm.
        return x

    def _fused_bounds(self) -> Optional[Bounds]:
        """The clamp the norm may apply now, or None to run unfused."""
        if not (self.with_norm and self.with_activation):
            return None
        norm, act = self.norm, self._modules.get('activate')
        if type(norm) is not DynamicNorm2d or act is None:
            return None
        bounds = clamp_bounds(act)
        if bounds is None or has_forward_hooks(norm, act):
            return None
        return bounds


def _fusable(module: nn.Module, uses: Counter) -> bool:
    if (
        type(module) is not ConvModule
        or 'forward' in module.__dict__
        or has_forward_hooks(module)
        or module._backward_hooks
        or not (module.with_norm and module.with_activation)
    ):
        return False
    norm, act = module.norm, module.activate
    order = list(module.order)
    return (
        type(norm) is DynamicNorm2d
        and clamp_bounds(act) is not None
        and order.index('act') == order.index('norm') + 1
        and uses[id(module)] == uses[id(norm)] == uses[id(act)] == 1
    )


def _fused_copy(module: ConvModule) -> FusedNormActConvModule:
    """A :class:`FusedNormActConvModule` with ``module``'s state and the
    same children (its own copies of the containers that hold them)."""
    fused = FusedNormActConvModule.__new__(FusedNormActConvModule)
    fused.__dict__.update(
        {
            key: copy.copy(value) if isinstance(value, (dict, set)) else value
            for key, value in module.__dict__.items()
        }
    )
    return fused


def fuse_norm_act(model: nn.Module) -> int:
    """Fuse each clamp activation into the DN layer before it, where that
    is provably the same function (see :mod:`.norm_act_fusion`): every
    such ``ConvModule`` of ``model`` (not ``model`` itself) becomes a
    :class:`FusedNormActConvModule` sharing its children. Idempotent;
    state-dict keys, outputs and gradients do not change.

    Args:
        model (nn.Module): Changed in place.

    Returns:
        int: How many modules were fused.
    """
    uses = Counter(
        id(m) for _, m in model.named_modules(remove_duplicate=False)
    )
    fused = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and _fusable(child, uses):
                setattr(parent, name, _fused_copy(child))
                fused += 1
    return fused
