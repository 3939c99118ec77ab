"""Compiled kernels, loaded in one place (as mmcv's ``ops``).

``dn_cpu`` is DN-B on the CPU (``csrc/dn_cpu.cpp``):

* ``normalize_act(x, alpha, lam, mean, var, eps, lo, hi)``: normalisation,
  per-(sample, channel) affine and the clamp activation that follows the
  norm, in one vectorised, multi-threaded pass over ``x``;
* ``dn_b_inference(x, fc1_weight, fc1_bias, fc2_weight, fc2_groups,
  base_scale, base_shift, mean, var, eps, lo, hi)``: all of DN-B in one
  call (the pooling pass, the SC-Module with its sigmoid, then
  ``normalize_act``);
* ``dn_b_train_forward`` / ``dn_b_train_backward``: DN-B with batch
  statistics and the clamp that follows it, the two halves of one autograd
  node (``dn_mmdet.norm.functional.dn_b_train_cpu``).

It is compiled when the package is installed, else on first use (see
:mod:`.ext_loader`); where neither works, DN warns once and uses ATen.
"""
from .ext_loader import CompiledExtension

#: DN's CPU kernel; ``dn_cpu.load()`` finds or builds it.
dn_cpu = CompiledExtension('dn_cpu', 'csrc/dn_cpu.cpp', 'the DN CPU kernel')

__all__ = ['dn_cpu', 'CompiledExtension']
