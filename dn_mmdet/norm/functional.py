"""Fast Dynamic Normalization: the arithmetic of DN-B at close to BN's cost.

Two facts make DN-B cheap (see README, "Performance"):

* The SC-Module's input, the input pooled over H and W, is the per-sample
  mean, which the batch statistics need anyway: the per-(sample, channel)
  mean and variance come from two streaming reductions over ``x``, and the
  batch mean and variance follow from them exactly by the law of total
  variance.
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


def _stats_dtype(x: Tensor) -> Tensor:
    """Statistics in float32 for half inputs (fp16 overflows in x**2)."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def per_sample_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance.

    Two cheap reductions (a sum and a sum of squares), not
    ``torch.var_mean``, whose Welford loop is several times slower than all
    of BatchNorm on the CPU. ``E[x^2] - E[x]^2`` loses relative precision
    ``~1e-7 * mean^2 / var`` in float32, negligible for the activations a
    norm layer sees (and half inputs are reduced in float32).

    Args:
        x (Tensor): (N, C, H, W).

    Returns:
        tuple[Tensor, Tensor]: mean (N, C) and variance (N, C), in float32
        or wider.
    """
    x = _stats_dtype(x)
    mean_nc = x.mean(dim=(2, 3))
    mean_sq_nc = _sum_hw_product(x, x) / (x.shape[2] * x.shape[3])
    return mean_nc, (mean_sq_nc - mean_nc * mean_nc).clamp_min(0)


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


def _sum_hw(t: Tensor) -> Tensor:
    return t.sum(dim=(2, 3), dtype=torch.float32 if t.dtype in
                 _LOW_PRECISION else None)


def _sum_hw_product(a: Tensor, b: Tensor) -> Tensor:
    """sum_{h,w} a * b per (sample, channel), without a full-size temporary
    when the layout allows it."""
    if a.dtype in _LOW_PRECISION:
        a, b = a.float(), b.float()
    if a.is_contiguous() and b.is_contiguous():
        return torch.linalg.vecdot(a.flatten(2), b.flatten(2))
    return (a * b).sum(dim=(2, 3))


class _DNBTrain(torch.autograd.Function):
    """DN-B with batch statistics; see :func:`dn_b_train`."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, scale_shift_fn: Callable,
                *sc_params: Tensor):
        mean_nc, var_nc = per_sample_moments(x)
        mean, var = batch_moments(mean_nc, var_nc)
        invstd = torch.rsqrt(var + eps)
        # The SC-Module is small ((N, C) in, (N, 2C) out): run it with its
        # own graph, which the backward below differentiates through.
        with torch.enable_grad():
            pooled = mean_nc.detach().requires_grad_(True)
            alpha, lam = scale_shift_fn(pooled)
        scale = alpha.detach().to(mean.dtype) * invstd
        shift = lam.detach().to(mean.dtype) - mean * scale
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
        # The only full-size reads before the final pass: two sums per
        # (sample, channel). With x^ = (x - mean) * invstd:
        sum_g = _sum_hw(grad_y)                               # sum g
        sum_gxhat = (_sum_hw_product(grad_y, x) -
                     mean * sum_g) * invstd                   # sum g * x^
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
