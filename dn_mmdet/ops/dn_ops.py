"""DN's operators, in torch's dispatcher under the namespace ``dn_mmdet``.

Two kinds, so that the profiler names every DN step ``dn_mmdet::...``,
``torch.compile(fullgraph=True)`` compiles through them and ``torch.export``
takes them:

* the C++ CPU ops of ``csrc/dn_cpu.cpp`` (DN-B on contiguous float32/float64
  CPU input), each with a fake kernel (shapes only, for compilers and
  exporters) and, for ``dn_b_train``, its autograd formula (the backward is
  the op ``dn_b_train_backward``), registered here once the library is
  loaded (:func:`load_cpu_ops`):

  - ``dn_b_inference(x, fc1_weight, fc1_bias, fc2_weight, fc2_groups,
    base_scale, base_shift, mean, var, eps, lo, hi) -> y``: DN-B with
    statistics ``mean``/``var`` and the clamp ``[lo, hi]``;
  - ``dn_b_train(x, fc1_weight, fc1_bias, fc2_weight, fc2_groups,
    base_scale, base_shift, eps, lo, hi) -> (y, mean, var, ...)``: DN-B with
    batch statistics; ``mean``/``var`` (C,) are the batch's (biased), for
    the caller to update its running statistics (the op mutates nothing);

* composite ops, defined here in ATen ops (``CompositeImplicitAutograd``:
  autograd, compilers and exporters see their ATen ops), for every other
  input (CUDA, float16/bfloat16, channels-last, DN-C):

  - ``moments(x) -> (mean, var)``: per-(sample, channel) mean and biased
    variance (N, C), as accurate as BatchNorm's (``torch.var_mean``: a
    Welford reduction, in float32 or wider);
  - ``normalize_affine(x, mean, var, alpha, lam, eps, lo, hi) -> y``:
    ``clamp((x - mean) / sqrt(var + eps) * alpha + lam, lo, hi)``, with
    (N, C) or (1, C) ``alpha``/``lam``, computed in float32 or wider and
    returned in ``x``'s dtype and memory format.

``lo``/``hi`` are ``-inf``/``inf`` for no clamp.
"""

import math
from types import SimpleNamespace

import torch
from torch import Tensor

from .ext_loader import CompiledExtension

#: DN's CPU kernel; :func:`load_cpu_ops` finds or builds and loads it.
dn_cpu = CompiledExtension('dn_cpu', 'csrc/dn_cpu.cpp', 'the DN CPU kernel')

#: Input dtypes the C++ ops take.
CPU_OP_DTYPES = (torch.float32, torch.float64)
_LOW_PRECISION = (torch.float16, torch.bfloat16)

# Kept alive for as long as the process: dropping it unregisters the ops.
_LIB = torch.library.Library('dn_mmdet', 'FRAGMENT')
_LIB.define('moments(Tensor x) -> (Tensor mean, Tensor var)')
_LIB.define(
    'normalize_affine(Tensor x, Tensor mean, Tensor var, '
    'Tensor alpha, Tensor lam, float eps, float lo, float hi) '
    '-> Tensor'
)


def _moments(x: Tensor):
    # float16/bfloat16 are reduced in float32 (fp16 overflows x**2).
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return mean, var


def _normalize_affine(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    alpha: Tensor,
    lam: Tensor,
    eps: float,
    lo: float,
    hi: float,
):
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    invstd = torch.rsqrt(var.to(dtype) + eps)
    scale = alpha.to(dtype) * invstd
    shift = lam.to(dtype) - mean.to(dtype) * scale
    y = torch.addcmul(
        shift[:, :, None, None], x.to(dtype), scale[:, :, None, None]
    )
    if lo > -math.inf or hi < math.inf:
        y = y.clamp(
            None if lo == -math.inf else lo, None if hi == math.inf else hi
        )
    return y.to(x.dtype)


_LIB.impl('moments', _moments, 'CompositeImplicitAutograd')
_LIB.impl('normalize_affine', _normalize_affine, 'CompositeImplicitAutograd')

#: The composite ops as plain functions, for ``torch.jit`` tracing (the ONNX
#: exporter): a traced call of ``torch.ops.dn_mmdet.*`` would be an op
#: that ONNX does not know, a plain call is its ATen ops.
COMPOSITE_FUNCTIONS = SimpleNamespace(
    moments=_moments, normalize_affine=_normalize_affine
)


@torch.compiler.assume_constant_result
def cpu_ops_available() -> bool:
    """Whether the C++ ops are loaded (finding, building and loading them
    on the first call, see :func:`load_cpu_ops`). A constant to compilers:
    the answer does not change within a process."""
    return load_cpu_ops()


def load_cpu_ops() -> bool:
    """Load the C++ ops and register their fake kernels and autograd
    (once); False where the kernel cannot be built (warned once)."""
    if not dn_cpu.load():
        return False
    if not _REGISTERED:
        _register_cpu_ops()
    return True


# Whether _register_cpu_ops ran (torch refuses a second registration).
_REGISTERED = []


def _register_cpu_ops() -> None:
    _REGISTERED.append(True)
    register_fake = torch.library.register_fake

    @register_fake('dn_mmdet::dn_b_inference', lib=_LIB)
    def _(x, fc1_weight, *args):
        return torch.empty_like(x)

    @register_fake('dn_mmdet::dn_b_train', lib=_LIB)
    def _(x, fc1_weight, *args):
        n, c = x.shape[:2]

        def per_sample():
            return x.new_empty((n, c))

        return (
            torch.empty_like(x),
            x.new_empty(c),
            x.new_empty(c),
            x.new_empty(c),
            per_sample(),
            x.new_empty((n, fc1_weight.shape[0])),
            per_sample(),
            per_sample(),
            per_sample(),
        )

    @register_fake('dn_mmdet::dn_b_train_backward', lib=_LIB)
    def _(
        grad_y,
        x,
        mean,
        invstd,
        pooled,
        hidden,
        alpha,
        scale,
        shift,
        fc1_weight,
        fc2_weight,
        *args,
    ):
        return (
            torch.empty_like(x),
            torch.empty_like(fc1_weight),
            fc1_weight.new_empty(fc1_weight.shape[0]),
            torch.empty_like(fc2_weight),
        )

    torch.library.register_autograd(
        'dn_mmdet::dn_b_train',
        _dn_b_train_backward,
        setup_context=_dn_b_train_setup,
        lib=_LIB,
    )


def _dn_b_train_setup(ctx, inputs, output) -> None:
    x, fc1_weight, _, fc2_weight, fc2_groups, _, _, _, lo, hi = inputs
    _, mean, _, invstd, pooled, hidden, alpha, scale, shift = output
    ctx.save_for_backward(
        x,
        mean,
        invstd,
        pooled,
        hidden,
        alpha,
        scale,
        shift,
        fc1_weight,
        fc2_weight,
    )
    ctx.constants = (fc2_groups, lo, hi)


def _dn_b_train_backward(ctx, grad_y, *unused_grads):
    # The other outputs (statistics, saved intermediates) are not
    # differentiated through: the layer uses them without autograd.
    fc2_groups, lo, hi = ctx.constants
    saved = ctx.saved_tensors
    grad_x, grad_w1, grad_b1, grad_w2 = torch.ops.dn_mmdet.dn_b_train_backward(
        grad_y.contiguous(), *saved, fc2_groups, lo, hi
    )
    return (grad_x, grad_w1, grad_b1, grad_w2) + (None,) * 6
