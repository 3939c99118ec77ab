"""Moving Average Batch Normalization (Yan, Wan, Zhang, Zhang, Wei and Sun,
"Towards Stabilizing Batch Statistics in Backward Propagation of Batch
Normalization", ICLR 2020), as its reference code (``MABN2d``) computes it."""

import copy
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable

from .aten_passes import affine_per_sample, centered_sums
from .base import BatchNormAffineChildLayer, replace_modules


def _channel_sums(a: Tensor, x: Tensor, dtype: torch.dtype):
    """``sum a * x`` and ``sum a`` over (N, H, W), each (C,), in ``dtype``:
    one pass over ``a`` and ``x`` without a full-size temporary."""
    n, c = x.shape[:2]
    zeros = x.new_zeros((n, c), dtype=dtype)
    weighted, plain = centered_sums(a, x, zeros, torch.ones_like(zeros))
    return weighted.sum(0), plain.sum(0)


class _MABNTrain(torch.autograd.Function):
    """MABN's training step: its forward and its own backward (Algorithm 1
    of the paper; not the autograd of the forward). Reads and writes the
    layer's buffers; see :class:`MABN2d` for the formulas."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor, layer: 'MABN2d'
    ) -> Tensor:
        n, _, h, w = x.shape
        count = n * h * w
        dtype = torch.promote_types(layer.buffer_x2.dtype, torch.float32)
        t = layer.bn.num_batches_tracked  # this iteration, counted from 1
        slot = torch.remainder(t, layer.window).view(1)
        # Which statistics to use is decided on the device (no sync).
        use_batch = (t <= layer.window) | (t < layer.warmup_iters)
        renorm_off = t <= max(layer.renorm_warmup_iters, layer.warmup_iters)

        sum_x2, _ = _channel_sums(x, x, dtype)
        chi = sum_x2 / count  # E[x^2], (C,)
        layer.buffer_x2.index_copy_(0, slot, chi.to(layer.buffer_x2)[None])
        v = torch.where(use_batch, chi, layer.buffer_x2.to(dtype).mean(0))
        inv_std = torch.rsqrt(v + layer.eps)
        running_var = layer.bn.running_var
        r = torch.sqrt((v + layer.eps) / (running_var.to(dtype) + layer.eps))
        r = torch.where(
            renorm_off,
            torch.ones_like(r),
            r.clamp(1 / layer.renorm_clip, layer.renorm_clip),
        )
        # The running estimate moves after r has used its old value.
        factor = (
            1.0 / t.to(dtype) if layer.momentum is None else layer.momentum
        )
        running_var.add_(
            ((v - running_var.to(dtype)) * factor).to(running_var)
        )

        scale = weight.to(dtype) * r * inv_std
        y = affine_per_sample(x, scale[None], bias.to(dtype)[None])
        ctx.save_for_backward(x, weight, r, inv_std)
        ctx.layer, ctx.slot, ctx.use_batch = layer, slot, use_batch
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight, r, inv_std = ctx.saved_tensors
        layer = ctx.layer
        n, _, h, w = x.shape
        dtype = inv_std.dtype
        if x.is_contiguous():  # the native one-pass sums need both so
            grad_y = grad_y.contiguous()
        sum_gx, sum_g = _channel_sums(grad_y, x, dtype)
        # g = dL/dy * gamma * r and z = x / sqrt(v + eps), so
        # psi = E[g z] = gamma r / sqrt(v + eps) * E[dL/dy x].
        gain = weight.to(dtype) * r * inv_std
        psi = gain * sum_gx / (n * h * w)
        layer.buffer_gz.index_copy_(0, ctx.slot, psi.to(layer.buffer_gz)[None])
        psi_bar = torch.where(
            ctx.use_batch, psi, layer.buffer_gz.to(dtype).mean(0)
        )
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dx = (g - z psi_bar) / sqrt(v + eps)
            #    = dL/dy * gain - x * psi_bar / (v + eps): two passes.
            grad_x = affine_per_sample(
                grad_y, gain[None], torch.zeros_like(gain)[None]
            )
            coef_x = -psi_bar * inv_std * inv_std
            grad_x.addcmul_(x, coef_x.to(x.dtype)[None, :, None, None])
        if ctx.needs_input_grad[1]:
            grad_weight = (r * inv_std * sum_gx).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_g.to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None


@MODELS.register_module('MABN')
@MODELS.register_module('MABN2d')
class MABN2d(BatchNormAffineChildLayer):
    r"""Moving Average Batch Normalization over a 4-D input (N, C, H, W).

    BN's statistics from one small batch are noisy in the forward pass (the
    variance) *and* in the backward pass (two gradient statistics); MABN
    (paper, Sec. 4) replaces each by a moving average over the last
    :math:`m` iterations, normalises without centring (the mean is left
    to :class:`~dn_mmdet.norm.CenConv2d`, which gives the preceding conv's
    output zero mean) and renormalises towards a running estimate. At
    iteration :math:`t = 1, 2, \ldots` in training (``m = real_batch_size //
    batch_size``, ``w = warmup_iters``):

    .. math::

        \chi_t &= \mathrm{E}_{N,H,W}[x^2] \in \mathbb{R}^C, \qquad
        B_x[t \bmod m] \leftarrow \chi_t \\
        v &= \chi_t \text{ if } t \le m \text{ or } t < w,
             \text{ else } \tfrac{1}{m} \textstyle\sum_j B_x[j]
             \quad \text{(the last } m \text{ iterations)} \\
        z &= x / \sqrt{v + \epsilon}, \qquad
        r = \mathrm{clip}_{[1/c,\, c]}\big(\sqrt{v + \epsilon} /
            \sqrt{R + \epsilon}\big)
             \text{, but } r = 1 \text{ while }
             t \le \max(t_r, w) \\
        y &= \gamma\, r\, z + \beta, \qquad
        R \leftarrow (1 - \mu) R + \mu v

    with :math:`c` = ``renorm_clip`` (5), :math:`t_r` =
    ``renorm_warmup_iters`` (1000) and :math:`\mu` = ``momentum`` (torch's
    convention: ``momentum=0.02`` is the reference's keep factor 0.98;
    ``None`` averages all iterations). :math:`r` uses :math:`R` before its
    update. The backward is MABN's own, not the gradient of the above:
    with :math:`g = \partial L/\partial y \cdot \gamma r` and :math:`r`,
    :math:`v` held constant,

    .. math::

        \psi_t &= \mathrm{E}_{N,H,W}[g z], \qquad B_g[t \bmod m] \leftarrow
        \psi_t, \qquad \bar\psi = \psi_t \text{ or the mean of } B_g
        \text{ (the rule of } v) \\
        \frac{\partial L}{\partial x} &= \frac{g - z \bar\psi}
            {\sqrt{v + \epsilon}}, \qquad
        \frac{\partial L}{\partial \gamma} = \sum_{N,H,W}
            \frac{\partial L}{\partial y} r z, \qquad
        \frac{\partial L}{\partial \beta} = \sum_{N,H,W}
            \frac{\partial L}{\partial y}

    While :math:`v = \chi_t` this is the exact gradient of :math:`y`
    (with :math:`r` constant); afterwards the batch's gradient statistic
    is replaced by its moving average, which is the method. The backward
    of iteration :math:`t` reads :math:`B_g` as the previous iterations'
    backward passes left it: :math:`B_x`, :math:`B_g`, :math:`t` and
    :math:`R` are buffers, so a run resumed from a checkpoint taken in the
    middle of a window continues exactly.

    Eval (and ``norm_eval``): :math:`y = \gamma x / \sqrt{R + \epsilon} +
    \beta`, BN's inference with a zero mean, computed by torch's
    ``batch_norm`` kernel: one per-channel affine, foldable into the conv
    (:meth:`to_batchnorm`, then mmcv's ``fuse_conv_bn``).

    **In OpenMMLab.** :math:`\gamma, \beta, R` and :math:`t` live in a child
    ``bn`` (``nn.BatchNorm2d``: ``weight``, ``bias``, ``running_var``,
    ``num_batches_tracked``; its ``running_mean`` stays 0) whose mode is
    MABN's mode. So a backbone's ``norm_eval`` (``eval()`` on every
    ``_BatchNorm``) freezes MABN at its eval form, ``frozen_stages`` with the
    rest of the stage; ``paramwise_cfg.norm_decay_mult`` and ``Constant``
    init on ``_BatchNorm`` treat :math:`\gamma, \beta` as BN's (and
    ``weight``/``bias`` here refer to them, for mmcv's ``constant_init``).
    MABN itself is no ``_BatchNorm``: ``sync_bn`` does not replace it (the
    child becomes a SyncBatchNorm, unused: MABN's statistics stay per
    process, as in the reference, whose moving averages stand in for a
    larger batch), and ``efficient_conv_bn_eval`` does not fold it.

    Checkpoint keys (``<p>`` is e.g. ``conv.mabn``)::

        <p>.bn.weight / bias / running_var (C,)
        <p>.bn.running_mean (C,, zero)
        <p>.bn.num_batches_tracked (t)
        <p>.buffer_x2 (m, C) / <p>.buffer_gz (m, C)

    Args:
        num_features (int): Channels C.
        batch_size (int): B, the images one process sees an iteration:
            set it to ``train_dataloader.batch_size``. Default: 2 (the
            reference's detection setting).
        real_batch_size (int): The batch the moving averages stand in for;
            a multiple of ``batch_size``, the window is
            ``m = real_batch_size // batch_size`` iterations. Default: 32.
        eps (float): Added to the second moment. Default: 1e-5.
        momentum (float | None): Update factor of the running estimate
            (torch's convention), or None for a cumulative average.
            Default: 0.02 (the reference's 0.98).
        warmup_iters (int): Iterations before the window average replaces
            the current batch's statistics. Default: 100.
        renorm_warmup_iters (int): :math:`r` is 1 for the first
            ``max(renorm_warmup_iters, warmup_iters)`` iterations.
            Default: 1000 (fixed in the reference).
        renorm_clip (float): :math:`r` is clipped to ``[1/c, c]``.
            Default: 5.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _abbr_ = 'mabn'
    # E[x^2] exists for a single value (no centring): MABN is defined for
    # any batch, however degenerate the warm-up statistics of one value are.
    min_values_per_channel = 1

    def __init__(
        self,
        num_features: int,
        batch_size: int = 2,
        real_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.02,
        warmup_iters: int = 100,
        renorm_warmup_iters: int = 1000,
        renorm_clip: float = 5.0,
    ) -> None:
        super().__init__(num_features)
        self.check_eps_momentum(eps, momentum)
        for name, value, low in (
            ('batch_size', batch_size, 1),
            ('real_batch_size', real_batch_size, 1),
            ('warmup_iters', warmup_iters, 0),
            ('renorm_warmup_iters', renorm_warmup_iters, 0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
            ):
                raise self.option_error(name, f'an int >= {low}', value)
        if real_batch_size % batch_size:
            raise self.option_error(
                'real_batch_size',
                f'a multiple of batch_size={batch_size} (the window is '
                'real_batch_size // batch_size iterations)',
                real_batch_size,
            )
        if (
            isinstance(renorm_clip, bool)
            or not isinstance(renorm_clip, (int, float))
            or not renorm_clip >= 1
        ):
            raise self.option_error(
                'renorm_clip', 'a number >= 1', renorm_clip
            )
        self.batch_size = batch_size
        self.real_batch_size = real_batch_size
        self.window = real_batch_size // batch_size
        self.warmup_iters = warmup_iters
        self.renorm_warmup_iters = renorm_warmup_iters
        self.renorm_clip = float(renorm_clip)
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.register_buffer(
            'buffer_x2', torch.zeros(self.window, num_features)
        )
        self.register_buffer(
            'buffer_gz', torch.zeros(self.window, num_features)
        )
        self._batch_size_checked = False

    @property
    def uses_batch_statistics(self) -> bool:
        return self.bn.training

    def extra_repr(self) -> str:
        return (
            f'{self.num_features}, batch_size={self.batch_size}, '
            f'real_batch_size={self.real_batch_size} (window '
            f'{self.window}), eps={self.eps}, momentum={self.momentum}, '
            f'warmup_iters={self.warmup_iters}, renorm_warmup_iters='
            f'{self.renorm_warmup_iters}, renorm_clip={self.renorm_clip}'
        )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if not self.bn.training:
            return F.batch_norm(
                x,
                self.bn.running_mean,
                self.bn.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            )
        if x.shape[0] == 0:
            # Nothing to count or average; keep the output in the graph.
            return x * self.weight[:, None, None] + self.bias[:, None, None]
        self._check_batch_size(x)
        self.bn.num_batches_tracked.add_(1)
        return _MABNTrain.apply(x, self.weight, self.bias, self)

    def _check_batch_size(self, x: Tensor) -> None:
        """Warn once if the first training batch is not ``batch_size``
        images: the window then stands in for another batch than
        ``real_batch_size``."""
        if self._batch_size_checked:
            return
        self._batch_size_checked = True
        if x.shape[0] != self.batch_size:
            warnings.warn(
                f'MABN: norm_cfg batch_size={self.batch_size} (B, images a '
                f'process an iteration), but a training batch holds '
                f'{x.shape[0]}: the window of real_batch_size // batch_size '
                f'= {self.window} iterations then averages '
                f'{self.window * x.shape[0]} images, not real_batch_size='
                f'{self.real_batch_size}. Set the norm_cfg batch_size to '
                'train_dataloader.batch_size.',
                stacklevel=2,
            )

    # ------------------------------------------------------------------ #
    # Inference form
    # ------------------------------------------------------------------ #
    def to_batchnorm(self) -> nn.BatchNorm2d:
        """An ``nn.BatchNorm2d`` in eval mode that computes what this layer
        computes in eval mode (zero mean, ``running_var`` = R, gamma, beta),
        e.g. for mmcv's ``fuse_conv_bn``. For inference only: training it
        would be BN, not MABN."""
        bn = nn.BatchNorm2d(self.num_features, eps=self.eps).to(self.bn.weight)
        bn.load_state_dict(copy.deepcopy(self.bn.state_dict()))
        return bn.eval()

    @classmethod
    def convert_to_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every MABN layer in ``module`` by :meth:`to_batchnorm`
        (in place; returns ``module``, or the BN if it is a MABN)."""
        return replace_modules(
            module, lambda m: m.to_batchnorm() if isinstance(m, cls) else None
        )
