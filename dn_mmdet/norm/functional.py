"""Fast Dynamic Normalization: the arithmetic of DN-B at close to BN's cost.

Two facts make DN-B cheap (see README, "Performance"):

* The SC-Module's input, the input pooled over H and W, is the per-sample
  mean, which the batch statistics need anyway: one pass over ``x`` gives
  the per-(sample, channel) sums, and the batch mean and variance follow
  from them exactly by the law of total variance.
* Normalisation and the per-sample affine fold into one scale and shift per
  (sample, channel): ``y = x * scale + shift`` is one elementwise pass, and its
  backward needs only ``x`` and two per-(sample, channel) sums of the output
  gradient, from which the whole input gradient follows in one more pass.

:func:`dn_b_train` implements training with batch statistics as a single
autograd node that keeps only ``x`` alive (as BN does) and runs the small
SC-Module's own autograd graph inside it. Without autograd on the CPU the
C++ kernel of :mod:`dn_mmdet.ops` computes all of DN-B in one call
(:func:`dn_b_inference_cpu`), or only the normalise-affine-clamp pass
(:func:`normalize_act_cpu`). Which of these runs is decided by
:meth:`DynamicNorm2d._select_path <dn_mmdet.norm.DynamicNorm2d>`;
``DN_MMDET_FUSED=0`` (:func:`fused_enabled`) switches all of them off.
"""
import math
import os
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from torch.nn.modules.module import (_global_forward_hooks,
                                     _global_forward_pre_hooks)

from ..ops import dn_cpu

_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: dn_mmdet's own process-wide module hooks (activation_fusion's), which
#: :func:`has_forward_hooks` does not count: they need not see the kernel's
#: insides.
OWN_GLOBAL_HOOKS = set()


FUSED_SWITCH = 'DN_MMDET_FUSED'
# os.environ.get raises and catches two KeyErrors when the variable is unset,
# the usual case: inside a model that cost ~10 us a layer in every forward
# (tools/analysis/profile_dn_layer.py --in-model). CPython's os.environ keeps
# its encoded variables in a dict, which fused_enabled reads without them.
try:
    _ENVIRON_DATA = os.environ._data
    _SWITCH_KEY = os.environ.encodekey(FUSED_SWITCH)
    _SWITCH_OFF = os.environ.encodevalue('0')
except AttributeError:  # not CPython's os.environ
    _ENVIRON_DATA = None


def fused_enabled() -> bool:
    """False when ``DN_MMDET_FUSED=0``: plain torch ops everywhere (the one
    switch of every fast path: the fused training node and the C++
    kernel). Read on every forward, so that a change takes effect at
    once."""
    if _ENVIRON_DATA is None:
        return os.environ.get(FUSED_SWITCH, '1') != '0'
    return _ENVIRON_DATA.get(_SWITCH_KEY) != _SWITCH_OFF


def per_sample_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance, differentiable.

    For the plain-ops paths (DN-C, synchronised statistics,
    ``DN_MMDET_FUSED=0``); the fused node computes the same in one native
    pass.

    Args:
        x (Tensor): (N, C, H, W).

    Returns:
        tuple[Tensor, Tensor]: mean (N, C) and variance (N, C), in float32
        or wider (half inputs are reduced in float32: fp16 overflows x**2).
    """
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    var_nc, mean_nc = torch.var_mean(x, dim=(2, 3), correction=0)
    return mean_nc, var_nc


def batch_moments(mean_nc: Tensor, var_nc: Tensor) -> Tuple[Tensor, Tensor]:
    """Batch mean and biased variance (C,) from per-sample ones (N, C).

    Law of total variance: every sample has the same H*W count, so
    ``Var = mean_n(var_nc) + mean_n((mean_nc - mean)^2)``.
    """
    mean = mean_nc.mean(0)
    var = var_nc.mean(0) + (mean_nc - mean).pow(2).mean(0)
    return mean, var


def affine_per_sample(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with (N, C) or (1, C) scale and shift.

    On a contiguous input this runs ATen's inference batch-norm kernel over
    ``x`` viewed as (1, N*C, H, W), with zero mean, unit variance and
    ``eps=0`` (so it computes exactly ``x * w + b``): on the CPU it is about
    three times faster than a broadcast ``addcmul``. Differentiable; without
    autograd the result is written into a fresh tensor (not a view), which
    a custom autograd Function may return.
    """
    n, c, h, w = x.shape
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        # Exporters get the portable form (ONNX: Mul + Add).
        return (x * scale.to(x.dtype)[:, :, None, None] +
                shift.to(x.dtype)[:, :, None, None])
    scale = scale.expand(n, c)
    shift = shift.expand(n, c)
    if not x.is_contiguous() or x.numel() == 0:
        return torch.addcmul(shift.to(x.dtype)[:, :, None, None], x,
                             scale.to(x.dtype)[:, :, None, None])
    param_dtype = (torch.float32 if x.dtype in _LOW_PRECISION else x.dtype)
    weight = scale.reshape(-1).to(param_dtype)
    bias = shift.reshape(-1).to(param_dtype)
    zeros = x.new_zeros(n * c, dtype=param_dtype)
    ones = x.new_ones(n * c, dtype=param_dtype)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or bias.requires_grad):
        out = torch.nn.functional.batch_norm(x.view(1, n * c, h, w), zeros,
                                             ones, weight, bias, False, 0.0,
                                             0.0)
        return out.view(n, c, h, w)
    out = torch.empty_like(x)
    unused = x.new_empty(0, dtype=param_dtype)
    torch.ops.aten.native_batch_norm.out(
        x.view(1, n * c, h, w), weight, bias, zeros, ones, False, 0.0, 0.0,
        out=out.view(1, n * c, h, w), save_mean=unused, save_invstd=unused)
    return out


def inverse_std(var: Tensor, eps: float) -> Tensor:
    """``1 / sqrt(var + eps)``, in float32 or wider."""
    return torch.rsqrt(var.to(torch.promote_types(var.dtype, torch.float32))
                       + eps)


def fold_affine(alpha: Tensor, lam: Tensor, mean: Tensor,
                invstd: Tensor) -> Tuple[Tensor, Tensor]:
    """``X~ * alpha + lambda = x * scale + shift``, with
    ``scale = alpha * invstd`` and ``shift = lambda - mean * scale``.

    ``alpha``, ``lam``: (N, C) or (1, C); ``mean``, ``invstd``
    (``1 / sqrt(var + eps)``): (C,). Computed in float32 or wider.
    """
    dtype = torch.promote_types(
        torch.promote_types(alpha.dtype, invstd.dtype), torch.float32)
    scale = alpha.to(dtype) * invstd.to(dtype)
    shift = lam.to(dtype) - mean.to(dtype) * scale
    return scale, shift


def _centered_sums(a: Tensor, x: Tensor, center: Tensor,
                   scale: Tensor) -> Tuple[Tensor, Tensor]:
    """``sum_hw a * (x - center) * scale`` and ``sum_hw a`` per (n, c).

    ``center`` and ``scale`` are (N, C). Not differentiable: for the fused
    node. On contiguous inputs this is ATen's batch-norm backward reduction
    over the (1, N*C, H, W) views, asking only for its weight and bias
    gradients, which are exactly these two sums: one vectorised pass over
    ``a`` and ``x`` with no full-size temporary (``(a * x).sum()`` writes
    one, and on the CPU its allocation alone costs more than the pass).
    """
    n, c, h, w = x.shape
    stats_dtype = center.dtype
    if a.is_contiguous() and x.is_contiguous():
        _, weighted, plain = torch.ops.aten.native_batch_norm_backward(
            a.view(1, n * c, h, w), x.view(1, n * c, h, w), None, None, None,
            center.reshape(-1), scale.reshape(-1), True, 0.0,
            [False, True, True])
        return (weighted.view(n, c).to(stats_dtype),
                plain.view(n, c).to(stats_dtype))
    a, x = a.to(stats_dtype), x.to(stats_dtype)
    centered = x - center[:, :, None, None]
    return ((a * centered).sum(dim=(2, 3)) * scale, a.sum(dim=(2, 3)))


class _DNBTrain(torch.autograd.Function):
    """DN-B with batch statistics; see :func:`dn_b_train`."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, scale_shift_fn: Callable,
                *sc_params: Tensor):
        n, c, h, w = x.shape
        hw = h * w
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        # One pass for sum x and sum x^2. Var = E[x^2] - E[x]^2 loses about
        # 1e-7 * mean^2 / var of relative precision in float32: 1e-5 at
        # |mean| = 10 std, far beyond what a conv's output shows (a two-pass
        # variance would cost a second read of x, or a temporary).
        zeros = x.new_zeros((n, c), dtype=stats_dtype)
        sum_x2, sum_x = _centered_sums(x, x, zeros, torch.ones_like(zeros))
        mean_nc = sum_x / hw
        var_nc = (sum_x2 / hw - mean_nc * mean_nc).clamp_min(0)
        mean, var = batch_moments(mean_nc, var_nc)
        invstd = inverse_std(var, eps)
        # The SC-Module is small ((N, C) in, (N, 2C) out): run it with its
        # own graph, which the backward below differentiates through.
        with torch.enable_grad():
            pooled = mean_nc.detach().requires_grad_(True)
            alpha, lam = scale_shift_fn(pooled)
        scale, shift = fold_affine(alpha.detach(), lam.detach(), mean, invstd)
        y = affine_per_sample(x, scale, shift)
        ctx.save_for_backward(x, mean, invstd, scale)
        ctx.sc_graph = (pooled, alpha, lam, sc_params)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, _grad_mean, _grad_var):
        x, mean, invstd, scale = ctx.saved_tensors
        pooled, alpha, lam, sc_params = ctx.sc_graph
        n, c, h, w = x.shape
        hw = h * w
        # One pass: sum g and sum g x^ per (sample, channel), where
        # x^ = (x - mean) * invstd is the normalised input.
        sum_gxhat, sum_g = _centered_sums(grad_y, x, mean.expand(n, c),
                                          invstd.expand(n, c))
        grads = torch.autograd.grad((alpha, lam), (pooled, ) + sc_params,
                                    (sum_gxhat.to(alpha.dtype),
                                     sum_g.to(lam.dtype)),
                                    retain_graph=True, allow_unused=True)
        grad_pooled, grad_params = grads[0], grads[1:]
        # BN's backward with a per-sample gamma (alpha = scale / invstd):
        # dx = invstd * (alpha g - E[alpha g] - x^ E[alpha g x^]) + dpool / HW
        alpha_val = scale / invstd
        count = n * hw
        mean_dxhat = (alpha_val * sum_g).sum(0) / count                  # (C,)
        mean_dxhat_xhat = (alpha_val * sum_gxhat).sum(0) / count         # (C,)
        coef_x = -invstd * invstd * mean_dxhat_xhat                      # (C,)
        const = (grad_pooled.to(invstd.dtype) / hw - invstd * mean_dxhat -
                 coef_x * mean)                                           # (N, C)
        # Second and last pass: dx = g * scale + x * coef_x + const.
        grad_x = affine_per_sample(grad_y, scale, const)
        grad_x.addcmul_(x, coef_x.to(x.dtype)[None, :, None, None])
        return (grad_x, None, None) + tuple(grad_params)


def dn_b_train(x: Tensor, eps: float, scale_shift_fn: Callable,
               sc_params: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor, Tensor]:
    """DN-B forward with batch statistics, as one autograd node.

    Args:
        x (Tensor): Input (N, C, H, W).
        eps (float): Added to the variance.
        scale_shift_fn (callable): Maps the pooled input (N, C) to
            ``(alpha, lambda)``, each (N, C) (the SC-Module plus its base).
        sc_params (tuple[Tensor]): The parameters ``scale_shift_fn`` uses;
            their gradients are returned through this node.

    Returns:
        tuple[Tensor, Tensor, Tensor]: The output (N, C, H, W) and the batch
        mean and biased variance (C,) for the running statistics.
    """
    return _DNBTrain.apply(x, eps, scale_shift_fn, *sc_params)


# --------------------------------------------------------------------- #
# Inference: normalisation, affine and the following activation in one pass
# --------------------------------------------------------------------- #
Bounds = Tuple[Optional[float], Optional[float]]


def activation_bounds(act: nn.Module) -> Optional[Bounds]:
    """The clamp an activation computes, ``(min, max)``, or None if it is
    not one: ReLU is ``(0, None)``, ReLU6 ``(0, 6)``, Hardtanh its range."""
    if isinstance(act, nn.ReLU):
        return (0.0, None)
    if isinstance(act, nn.Hardtanh):  # ReLU6 is a Hardtanh
        return (float(act.min_val), float(act.max_val))
    return None


def _clamp_range(bounds: Optional[Bounds]) -> Tuple[float, float]:
    lo, hi = bounds if bounds is not None else (None, None)
    return (-math.inf if lo is None else lo, math.inf if hi is None else hi)


def kernel_accepts(x: Tensor) -> bool:
    """Whether the C++ kernel (:mod:`dn_mmdet.ops`) takes ``x``: a
    contiguous float32/float64 CPU tensor. (float16/bfloat16 keep ATen's
    float32 arithmetic; channels-last inputs take ATen too.)"""
    return (x.is_cpu and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous())


def has_forward_hooks(*modules: nn.Module) -> bool:
    """Whether a forward hook would see one of ``modules`` run (then they
    must run in torch: the C++ op would skip the hooks, e.g. a MAdds
    counter's on the SC-Module's FCs): a process-wide hook (not counting
    dn_mmdet's own, :data:`OWN_GLOBAL_HOOKS`) or one of their own. Pass
    every module the torch path would call."""
    # Loops, not any() of generators: a DN layer asks on every forward.
    if _global_forward_hooks or (
            _global_forward_pre_hooks
            and not OWN_GLOBAL_HOOKS.issuperset(
                _global_forward_pre_hooks.values())):
        return True
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return True
    return False


class DNBTensors(NamedTuple):
    """What the C++ kernel reads of a DN-B layer besides its input: the
    SC-Module's weights (see :meth:`SCModule.kernel_weights
    <dn_mmdet.norm.sc_module.SCModule.kernel_weights>`), the base affine
    and the running statistics (None without them)."""
    fc1_weight: Tensor
    fc1_bias: Tensor
    fc2_weight: Tensor
    fc2_groups: int
    base_scale: Tensor
    base_shift: Tensor
    running_mean: Optional[Tensor]
    running_var: Optional[Tensor]


def normalize_act_cpu(x: Tensor, alpha: Tensor, lam: Tensor, mean: Tensor,
                      var: Tensor, eps: float,
                      bounds: Optional[Bounds] = None) -> Tensor:
    """``clamp((x - mean) / sqrt(var + eps) * alpha + lam, *bounds)`` in one
    pass of the C++ kernel (one read and one write of ``x``; ATen needs a
    pass for the affine and one for the clamp). No autograd.

    Args:
        x (Tensor): (N, C, H, W), accepted by :func:`kernel_accepts`.
        alpha (Tensor): Scale, (N, C) (DN-B) or (1, C) (DN-C).
        lam (Tensor): Shift, same shape as ``alpha``.
        mean (Tensor): (C,) statistics to normalise with.
        var (Tensor): (C,) biased variance.
        eps (float): Added to the variance.
        bounds (tuple, optional): ``(min, max)`` of the clamp (either may be
            None), e.g. from :func:`activation_bounds`; None for no clamp.

    Returns:
        Tensor: A new tensor of ``x``'s shape and dtype.
    """
    dtype = x.dtype
    return dn_cpu.module.normalize_act(x, alpha.to(dtype), lam.to(dtype),
                                       mean.to(dtype), var.to(dtype), eps,
                                       *_clamp_range(bounds))


def dn_b_kernel_applies(x: Tensor, tensors: Optional[DNBTensors]) -> bool:
    """Whether :func:`dn_b_inference_cpu` and :func:`dn_b_train_cpu` can
    compute DN-B with these ``tensors`` (None: an SC-Module the kernel does
    not implement): every one has ``x``'s dtype."""
    if tensors is None:
        return False
    dtype = x.dtype
    weights_and_buffers = (tensors.fc1_weight, tensors.fc1_bias,
                           tensors.fc2_weight, tensors.base_scale,
                           tensors.base_shift, tensors.running_mean,
                           tensors.running_var)
    return all(t.dtype == dtype for t in weights_and_buffers
               if t is not None)


def dn_b_inference_cpu(x: Tensor, tensors: DNBTensors, eps: float,
                       bounds: Optional[Bounds] = None) -> Tensor:
    """All of DN-B's inference in one call of the C++ kernel: the pooling
    pass, the SC-Module, normalisation, affine and clamp (the dozen small
    ops a layer that these take from Python cost ~10 us each).

    Args:
        x (Tensor): (N, C, H, W), accepted by :func:`kernel_accepts`.
        tensors (DNBTensors): The layer's weights and running statistics;
            see :func:`dn_b_kernel_applies`.
        eps (float): Added to the variance.
        bounds (tuple, optional): The clamp, as in :func:`normalize_act_cpu`.

    Returns:
        Tensor: A new tensor of ``x``'s shape and dtype. No autograd.
    """
    return dn_cpu.module.dn_b_inference(
        x, *dn_b_inference_args(tensors, eps, bounds))


def dn_b_inference_args(tensors: DNBTensors, eps: float,
                        bounds: Optional[Bounds] = None) -> tuple:
    """The C++ op's arguments after ``x`` in :func:`dn_b_inference_cpu`
    (which a prepared forward keeps)."""
    return (*tensors, eps, *_clamp_range(bounds))


# --------------------------------------------------------------------- #
# Training on the CPU: the whole node in the C++ kernel
# --------------------------------------------------------------------- #
class _DNBTrainCPU(torch.autograd.Function):
    """DN-B with batch statistics and its clamp, both halves in the C++
    kernel; see :func:`dn_b_train_cpu`."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, lo: float, hi: float,
                fc2_groups: int, base_scale: Tensor, base_shift: Tensor,
                running_mean: Tensor, running_var: Tensor, factor: float,
                fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor):
        (y, mean, invstd, pooled, hidden, alpha, scale,
         shift) = dn_cpu.module.dn_b_train_forward(
             x, fc1_weight, fc1_bias, fc2_weight, fc2_groups, base_scale,
             base_shift, eps, lo, hi, running_mean, running_var, factor)
        ctx.save_for_backward(x, mean, invstd, pooled, hidden, alpha, scale,
                              shift, fc1_weight, fc2_weight)
        ctx.constants = (fc2_groups, lo, hi)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        fc2_groups, lo, hi = ctx.constants
        (x, mean, invstd, pooled, hidden, alpha, scale, shift, fc1_weight,
         fc2_weight) = ctx.saved_tensors
        grad_x, grad_w1, grad_b1, grad_w2 = dn_cpu.module.dn_b_train_backward(
            grad_y.contiguous(), x, mean, invstd, pooled, hidden, alpha,
            scale, shift, fc1_weight, fc2_weight, fc2_groups, lo, hi)
        needs = ctx.needs_input_grad
        return ((grad_x if needs[0] else None), ) + (None, ) * 9 + (
            grad_w1 if needs[10] else None, grad_b1 if needs[11] else None,
            grad_w2 if needs[12] else None)


def dn_b_train_cpu(x: Tensor, tensors: DNBTensors, eps: float,
                   factor: float, bounds: Optional[Bounds] = None) -> Tensor:
    """DN-B's training forward with batch statistics, and the clamp that
    follows it, as one autograd node whose forward and backward are each one
    call of the C++ kernel (see :func:`dn_b_kernel_applies` for when it
    applies). The same arithmetic as :func:`dn_b_train` (one statistics
    pass, one output pass; two passes backward; only ``x`` kept alive), with
    the SC-Module's forward and backward, the clamp's mask and the update of
    the running statistics inside the kernel, so that a layer costs a few
    calls instead of a few dozen small ops (at 7x7 maps those, not the
    passes, were DN's extra cost).

    Args:
        x (Tensor): (N, C, H, W), accepted by :func:`kernel_accepts`.
        tensors (DNBTensors): The layer's weights and running statistics,
            which move towards the batch's mean and unbiased variance by
            ``factor`` (BatchNorm's momentum; 0 leaves them as they are).
        eps (float): Added to the variance.
        factor (float): See ``tensors``.
        bounds (tuple, optional): The clamp, as in :func:`normalize_act_cpu`.

    Returns:
        Tensor: The output (N, C, H, W), clamped to ``bounds``.
    """
    running_mean, running_var = tensors.running_mean, tensors.running_var
    if running_mean is None or not factor:
        running_mean = running_var = x.new_empty(0)
        factor = 0.0
    return _DNBTrainCPU.apply(x, eps, *_clamp_range(bounds),
                              tensors.fc2_groups, tensors.base_scale,
                              tensors.base_shift, running_mean, running_var,
                              float(factor), tensors.fc1_weight,
                              tensors.fc1_bias, tensors.fc2_weight)
