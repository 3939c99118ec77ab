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
SC-Module's own autograd graph inside it. Everything else (eval, DN-C,
synchronised statistics) is cheap enough as plain torch ops.
"""
from typing import Callable, Tuple

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def per_sample_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance, differentiable.

    For the plain-ops paths (DN-C, synchronised statistics, ``impl='plain'``);
    the fused node computes the same in one native pass.

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
    if not x.is_contiguous():
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
        invstd = torch.rsqrt(var + eps)
        # The SC-Module is small ((N, C) in, (N, 2C) out): run it with its
        # own graph, which the backward below differentiates through.
        with torch.enable_grad():
            pooled = mean_nc.detach().requires_grad_(True)
            alpha, lam = scale_shift_fn(pooled)
        scale = alpha.detach().to(stats_dtype) * invstd
        shift = lam.detach().to(stats_dtype) - mean * scale
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
