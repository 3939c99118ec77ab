"""Fast Dynamic Normalization: the arithmetic of DN-B at close to BN's cost.

Two facts make DN-B cheap (see README, "Performance"):

* The SC-Module's input, the input pooled over H and W, is the per-sample
  mean, which the batch statistics need anyway: one pass over ``x`` gives the
  per-(sample, channel) mean and variance, and the batch mean and variance
  follow from them by the law of total variance (exact, and as stable as
  Welford's algorithm that computes the per-sample terms).
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
    """Per-(sample, channel) mean and biased variance in one pass.

    Args:
        x (Tensor): (N, C, H, W).

    Returns:
        tuple[Tensor, Tensor]: mean (N, C) and variance (N, C), in float32
        or wider.
    """
    var_nc, mean_nc = torch.var_mean(_stats_dtype(x), dim=(2, 3),
                                     correction=0)
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
    """``x * scale + shift`` with (N, C) or (1, C) scale/shift, one pass."""
    return torch.addcmul(shift.to(x.dtype)[:, :, None, None], x,
                         scale.to(x.dtype)[:, :, None, None])


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
        grad_x = affine_per_sample(x, coef_x.expand(n, c), const)
        grad_x.addcmul_(grad_y, scale.to(grad_y.dtype)[:, :, None, None])
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
