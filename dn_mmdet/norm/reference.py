"""The straightforward Dynamic Normalization, the yardstick of the fast one.

Written as the paper states it (DN Sec. 3.3, equations 6 and 7), one step
per line, all through autograd: BN without affine, a pooling pass over the
input, the SC-Module, a multiply-add pass. :class:`DynamicNorm2d` computes
the same function far more cheaply (:mod:`dn_mmdet.ops`: one statistics
pass, one elementwise pass, a fused backward, all in C++ on the CPU).

Nothing in the package uses it. The tests hold every path of
:class:`DynamicNorm2d` to it, and ``tools/analysis/benchmark_norm.py``
measures it beside the fast layer (what the fast paths save); it lives in the
package, not in ``tests/``, so that the tool does not import from the tests.
"""

import torch.nn.functional as F
from torch import Tensor

from .dynamic_norm import DynamicNorm2d


def dynamic_norm_reference(dn: DynamicNorm2d, x: Tensor) -> Tensor:
    """What ``dn(x)`` computes, straightforwardly; updates ``dn``'s running
    statistics as its forward does.

    Args:
        dn (DynamicNorm2d): The layer whose parameters, buffers and mode
            are used.
        x (Tensor): Input of shape (N, C, H, W).

    Returns:
        Tensor: (N, C, H, W), ``X~ * alpha + lambda``.
    """
    bn = dn.bn
    use_batch_stats = dn.uses_batch_statistics
    if use_batch_stats:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    momentum = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked += 1
        momentum = (
            1 / float(bn.num_batches_tracked)
            if bn.momentum is None
            else bn.momentum
        )
    x_tilde = F.batch_norm(
        x,
        bn.running_mean,
        bn.running_var,
        None,
        None,
        use_batch_stats,
        momentum,
        dn.eps,
    )
    if dn.mode == 'B':
        alpha, lam = dn.sc(x.mean(dim=(2, 3)))
    else:
        alpha, lam = dn.sc.forward_dn_c(mean, (var + dn.eps).sqrt(), dn.mode)
    alpha = alpha + dn.base_scale
    lam = lam + dn.base_shift
    y = x_tilde * alpha[:, :, None, None] + lam[:, :, None, None]
    return y


class DynamicNorm2dReference(DynamicNorm2d):
    """A DN layer computed by :func:`dynamic_norm_reference`, for the
    benchmark's reference rows (``norm_cfg=dict(type=DynamicNorm2dReference,
    ...)``; not registered)."""

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return dynamic_norm_reference(self, x)
