"""DN-B's inference forward, prepared once and reused.

A DN-B layer in eval on the CPU is one call of the C++ kernel
(:func:`~dn_mmdet.norm.functional.dn_b_inference_cpu`). Deciding that
(:meth:`DynamicNorm2d._select_path <dn_mmdet.norm.DynamicNorm2d>`) and
gathering the call's arguments takes a dozen Python calls, and inside a
model, between convolutions that evict the interpreter's code and data from
the caches, those took about 80 us a layer on the project's 2-vCPU machine:
in mmdet's MobileNetV2 at batch 2 and 128 px, 4.2 of the 4.3 ms DN-B added
to BN's norm layers (``tools/analysis/profile_dn_layer.py --in-model``;
README, "Performance").

:class:`PreparedInference` keeps what such a forward chose and gathered, and
later forwards run it after checking, with a few comparisons, that nothing
the choice depended on has changed. When anything has, it returns None and
the layer chooses again (and prepares anew, if the kernel path is chosen
again).
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules import module as _module
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import dn_cpu
from .activation_fusion import mark_clamped
from .base import NormLayer
from .functional import (Bounds, DNBTensors, dn_b_inference_args,
                         fused_enabled, has_forward_hooks)
from .sc_module import GroupedFC, SCModule

#: How many parameters, buffers and child modules have been assigned to
#: the modules a DN layer is made of (norm layers, SC-Modules and their FCs,
#: BatchNorms) in this process: a prepared call is valid while this count
#: stands where it did when it was made, so that one comparison stands for
#: checking that every tensor and part of the layer is still the one the
#: call holds. (torch calls the registration hooks below on every such
#: assignment, ``load_state_dict(assign=True)`` and activation fusion
#: included.)
_assignments = 0
_PARTS = (NormLayer, SCModule, GroupedFC, _BatchNorm)


def _count_assignment(module, name, value):
    global _assignments
    if isinstance(module, _PARTS):
        _assignments += 1


#: Whether this torch has the process-wide registration hooks (2.1 on);
#: without them no forward is prepared, and each one chooses its path.
PREPARES = hasattr(_module, 'register_module_parameter_registration_hook')
if PREPARES:
    _module.register_module_parameter_registration_hook(_count_assignment)
    _module.register_module_buffer_registration_hook(_count_assignment)
    _module.register_module_module_registration_hook(_count_assignment)


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
    * no parameter, buffer or module has been assigned to a DN layer or
      one of its parts since, in any layer of the process (so this layer's
      tensors and parts are the ones this call holds); the statistics child
      is in eval with the same ``eps``; no forward hooks watch the
      SC-Module's parts.

    ``DynamicNorm2d`` drops it on ``_apply`` (``.to()``, ``.double()``,
    which change tensors in place) and leaves it out of pickles and deep
    copies. Changes of the values in place (an optimizer step,
    ``load_state_dict``) need nothing: the call reads the same tensors.

    Args:
        layer (nn.Module): The DN layer, in DN-B mode.
        tensors (DNBTensors): What the kernel reads of it
            (``layer._dn_b_tensors()``).
        bounds (tuple, optional): Its fused clamp, ``(min, max)``.
    """

    __slots__ = ('_assignments', '_stats', '_watched', '_op_args', '_dtype',
                 '_channels', '_eps', '_bounds')

    def __init__(self, layer: nn.Module, tensors: DNBTensors,
                 bounds: Optional[Bounds]):
        self._assignments = _assignments
        self._stats = layer._modules['bn']
        self._watched = layer._modules['sc'].kernel_skips()
        self._dtype = tensors.base_scale.dtype
        self._channels = layer.num_features
        self._eps = self._stats.eps
        self._bounds = bounds
        self._op_args = dn_b_inference_args(tensors, self._eps, bounds)

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
        stats = self._stats
        if (_assignments != self._assignments or stats.training
                or stats.eps != self._eps or has_forward_hooks(*self._watched)
                or not fused_enabled() or not dn_cpu.load()):
            return None
        y = dn_cpu.module.dn_b_inference(x, *self._op_args)
        if self._bounds is not None:
            mark_clamped(y, self._bounds)
        return y
