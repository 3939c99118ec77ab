"""The straightforward Dynamic Normalization, kept as the reference.

Written as the paper states it, one step per line, all through autograd: BN
without affine, a pooling pass over the input, the SC-Module, a multiply-add
pass. :class:`~dn_mmdet.norm.DynamicNorm2d` computes the same function far
more cheaply (one statistics pass, one elementwise pass, a fused backward);
the tests hold it to this reference, and ``tools/analysis/benchmark_norm.py``
measures both.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .sc_module import SCModule


def dn_c_descriptor_scales(sc: SCModule, mean: Tensor, std: Tensor,
                           mode: str):
    """SC-Module outputs of DN-C for batch statistics ``mean``, ``std`` (C,).

    ``mode='C1'`` joins the E[X] and Std[X] branches after FC1, ``'C2'``
    after FC2 (DN Table 1, notes 1 and 2); both branches share the FCs, which
    is what gives the paper's 3.03M parameters for DN-C. Returns ``(1, C)``
    alpha and lambda deltas.
    """
    mean, std = mean[None], std[None]
    if mode == 'C1':
        return sc.split(sc.fc2(sc.act(sc.fc1(mean) + sc.fc1(std))))
    alpha_m, lambda_m = sc(mean)
    alpha_s, lambda_s = sc(std)
    return alpha_m + alpha_s, lambda_m + lambda_s


def dynamic_norm_reference(x: Tensor,
                           sc: SCModule,
                           base_scale: Tensor,
                           base_shift: Tensor,
                           running_mean: Optional[Tensor],
                           running_var: Optional[Tensor],
                           use_batch_stats: bool,
                           momentum: float,
                           eps: float,
                           mode: str = 'B') -> Tensor:
    """Dynamic Normalization, straightforwardly.

    Args:
        x (Tensor): Input of shape (N, C, H, W).
        sc (SCModule): The scale-and-shift generator.
        base_scale, base_shift (Tensor): (C,) constants that alpha and
            lambda start from (1 and 0 for a fresh layer).
        running_mean, running_var (Tensor | None): Running statistics,
            updated in place when ``use_batch_stats`` (as ``F.batch_norm``).
        use_batch_stats (bool): Normalise with the batch statistics
            (training) rather than the running ones (eval).
        momentum (float): Effective update factor of the running statistics.
        eps (float): Added to the variance.
        mode (str): ``'B'`` (DN-B), ``'C1'`` or ``'C2'`` (DN-C).

    Returns:
        Tensor: (N, C, H, W), ``X~ * alpha + lambda``.
    """
    if use_batch_stats:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = running_mean, running_var
    x_tilde = F.batch_norm(x, running_mean, running_var, None, None,
                           use_batch_stats, momentum, eps)
    if mode == 'B':
        alpha, lam = sc(x.mean(dim=(2, 3)))
    else:
        alpha, lam = dn_c_descriptor_scales(sc, mean, (var + eps).sqrt(),
                                            mode)
    alpha = alpha + base_scale
    lam = lam + base_shift
    return x_tilde * alpha[:, :, None, None] + lam[:, :, None, None]
