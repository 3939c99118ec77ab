"""DN-B's inference forward, prepared once and reused.

A DN-B layer in eval on the CPU is one call of the C++ kernel
(:func:`~dn_mmdet.norm.functional.dn_b_inference_cpu`). Deciding that
(:meth:`DynamicNorm2d._select_path <dn_mmdet.norm.DynamicNorm2d>`) and
gathering the call's arguments takes a dozen Python calls, and inside a
model, between convolutions that evict the interpreter's code and data from
the caches, those took about 55 us a layer on the project's 2-vCPU machine:
in MobileNetV2 at batch 2 and 128 px, 3.4 of DN's 3.9 ms above BN's
(``tools/analysis/profile_dn_layer.py --in-model``; README, "Performance").

:class:`PreparedInference` keeps what such a forward chose and gathered, and
later forwards run it after checking, with plain comparisons, that nothing
the choice depended on has changed. When anything has, it returns None and
the layer chooses again (and prepares anew, if the kernel path is chosen
again).
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..ops import dn_cpu
from .activation_fusion import mark_clamped
from .functional import (Bounds, DNBTensors, dn_b_inference_cpu,
                         fused_enabled, has_forward_hooks)


class PreparedInference:
    """A DN-B layer's inference as one kernel call, with its arguments.

    Made by a forward that chose the ``'dn_b_kernel'`` path without
    autograd, from the tensors that forward gathered. :meth:`__call__`
    runs it on a later input when all of these still hold, as they did when
    the choice was made:

    * no autograd (``torch.no_grad`` or ``inference_mode``), no tracing or
      ``torch.compile``, ``DN_MMDET_FUSED`` not 0, the kernel loaded;
    * the input is a contiguous 4-D CPU tensor of the weights' dtype with
      the layer's channels and at least one value;
    * the layer still holds the same statistics child (in eval, same
      ``eps``, the same running statistics), SC-Module parts and fused
      activation, the same weight and buffer tensors, all of the input's
      dtype, and no forward hooks watch the SC-Module's parts.

    So nothing else has to drop it: ``train()`` shows in the statistics
    child, ``.to()``/``.double()`` in the tensors' dtype (or, on another
    device, in the input's), ``load_state_dict`` copies into the same
    tensors (or, with ``assign=True``, replaces them).

    Args:
        layer (DynamicNorm2d): The layer, in DN-B mode.
        tensors (DNBTensors): What the kernel reads of it
            (``layer._dn_b_tensors()``).
        bounds (tuple, optional): Its fused clamp, ``(min, max)``.
    """

    __slots__ = ('_layer_modules', '_stats', '_sc', '_sc_parts',
                 '_activation', '_layer_buffers', '_tensors', '_dtype',
                 '_channels', '_eps', '_bounds')

    def __init__(self, layer: nn.Module, tensors: DNBTensors,
                 bounds: Optional[Bounds]):
        modules = layer._modules
        self._layer_modules = modules
        self._stats = modules['bn']
        self._sc = modules['sc']
        sc_modules = self._sc._modules
        self._sc_parts = (sc_modules['fc1'], sc_modules['act'],
                          sc_modules['fc2'])
        self._activation = modules.get('activation')
        self._layer_buffers = layer._buffers
        self._tensors = tensors
        self._dtype = tensors.base_scale.dtype
        self._channels = layer.num_features
        self._eps = self._stats.eps
        self._bounds = bounds

    def __call__(self, x: Tensor) -> Optional[Tensor]:
        """DN-B of ``x`` (clamped to the fused activation's bounds, and
        tagged as such), or None where the checks above fail."""
        if (torch.is_grad_enabled() or torch.jit.is_tracing()
                or torch.compiler.is_compiling()):
            return None
        if not (x.dtype is self._dtype and x.is_cpu and x.is_contiguous()
                and x.dim() == 4 and x.shape[1] == self._channels
                and x.numel() > 0):
            return None
        if not (self._unchanged() and fused_enabled() and dn_cpu.load()):
            return None
        y = dn_b_inference_cpu(x, self._tensors, self._eps, self._bounds)
        if self._bounds is not None:
            mark_clamped(y, self._bounds)
        return y

    def _unchanged(self) -> bool:
        modules, stats, t = self._layer_modules, self._stats, self._tensors
        if (modules['bn'] is not stats or modules['sc'] is not self._sc
                or modules.get('activation') is not self._activation):
            return False
        stats_buffers = stats._buffers
        if (stats.training or stats.eps != self._eps
                or stats_buffers['running_mean'] is not t.running_mean
                or stats_buffers['running_var'] is not t.running_var):
            return False
        sc_modules = self._sc._modules
        fc1, act, fc2 = self._sc_parts
        if (sc_modules['fc1'] is not fc1 or sc_modules['act'] is not act
                or sc_modules['fc2'] is not fc2
                or fc1._parameters['weight'] is not t.fc1_weight
                or fc1._parameters['bias'] is not t.fc1_bias
                or fc2._parameters['weight'] is not t.fc2_weight
                or fc2.groups != t.fc2_groups):
            return False
        own = self._layer_buffers
        if (own['base_scale'] is not t.base_scale
                or own['base_shift'] is not t.base_shift):
            return False
        dtype = self._dtype
        if not (t.fc1_weight.dtype is dtype and t.fc1_bias.dtype is dtype
                and t.fc2_weight.dtype is dtype
                and t.base_scale.dtype is dtype
                and t.base_shift.dtype is dtype
                and t.running_mean.dtype is dtype
                and t.running_var.dtype is dtype):
            return False
        return not has_forward_hooks(self._sc, fc1, act, fc2)
