"""Switchable Normalization (Luo, Ren, Peng, Zhang and Li, "Differentiable
Learning-to-Normalize via Switchable Normalization", ICLR 2019), as its
reference code (``SwitchNorm2d``) computes it."""

from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable

from .aten_passes import LOW_PRECISION, affine_per_sample, centered_sums
from .base import BatchNormAffineChildLayer

IMPLS = ('auto', 'plain')


def instance_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and *unbiased* variance over H and W, as
    SN's reference (``x.var``); a 1x1 map's variance is 0 (its biased
    value: the unbiased one is 0/0). Differentiable; (N, C), in float32 or
    wider."""
    if x.dtype in LOW_PRECISION:
        x = x.float()
    correction = 1 if x.shape[2] * x.shape[3] > 1 else 0
    var, mean = torch.var_mean(x, dim=(2, 3), correction=correction)
    return mean, var


def _instance_moments_one_pass(x: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`instance_moments` without autograd, from one native pass for
    the sums of x and x^2 (ten times faster than ``torch.var_mean`` on the
    CPU). ``E[x^2] - E[x]^2`` loses precision only where a channel's mean
    is many standard deviations from zero, as DN's statistics do."""
    n, c, h, w = x.shape
    hw = h * w
    zeros = x.new_zeros(
        (n, c), dtype=torch.promote_types(x.dtype, torch.float32)
    )
    sum_x2, sum_x = centered_sums(x, x, zeros, torch.ones_like(zeros))
    mean = sum_x / hw
    if hw == 1:
        return mean, zeros
    return mean, ((sum_x2 - sum_x * mean) / (hw - 1)).clamp_min(0)


class _SwitchNormTrain(torch.autograd.Function):
    """SN with autograd, as one node that keeps only ``x`` alive.

    ``y = x * scale + shift`` with a (sample, channel) ``scale`` and
    ``shift`` that depend on ``x`` only through its instance moments: the
    forward is one pass for the moments and one for the affine; the
    backward one pass for two sums of the output gradient, the small
    (N, C) graph of the mixing, and two passes for the input gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, mix: Callable, *params: Tensor):
        mean_in, var_in = _instance_moments_one_pass(x)
        with torch.enable_grad():
            mean_in = mean_in.detach().requires_grad_(True)
            var_in = var_in.detach().requires_grad_(True)
            scale, shift, batch_stats = mix(mean_in, var_in)
        y = affine_per_sample(x, scale.detach(), shift.detach())
        ctx.save_for_backward(x)
        ctx.graph = (mean_in, var_in, scale, shift, params)
        batch_stats = tuple(s.detach() for s in batch_stats)
        ctx.mark_non_differentiable(*batch_stats)
        return (y,) + batch_stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, *unused):
        (x,) = ctx.saved_tensors
        mean_in, var_in, scale, shift, params = ctx.graph
        n, c, h, w = x.shape
        hw = h * w
        zeros = mean_in.new_zeros((n, c))
        # sum_hw g x and sum_hw g: the gradients of scale and shift.
        if x.is_contiguous():  # the native one-pass sums need both so
            grad_y = grad_y.contiguous()
        sum_gx, sum_g = centered_sums(grad_y, x, zeros, torch.ones_like(zeros))
        grads = torch.autograd.grad(
            (scale, shift),
            (mean_in, var_in) + params,
            (sum_gx, sum_g),
            allow_unused=True,
        )
        grad_mean, grad_var = grads[:2]
        # d mean_in / dx = 1 / HW; d var_in / dx = 2 (x - mean_in) / (HW - 1)
        # (0 for a 1x1 map, whose variance is the constant 0).
        coef_x = (
            grad_var * (2.0 / (hw - 1))
            if hw > 1 and grad_var is not None
            else torch.zeros_like(zeros)
        )
        if grad_mean is None:
            grad_mean = torch.zeros_like(zeros)
        const = grad_mean / hw - coef_x * mean_in.detach()
        grad_x = affine_per_sample(grad_y, scale.detach(), const)
        grad_x.addcmul_(x, coef_x.to(x.dtype)[:, :, None, None])
        return (grad_x, None) + tuple(grads[2:])


@MODELS.register_module('SN')
@MODELS.register_module('SwitchNorm2d')
class SwitchNorm2d(BatchNormAffineChildLayer):
    r"""Switchable Normalization over a 4-D input (N, C, H, W).

    Statistics of three scopes, all derived from the instance moments of
    ``x`` viewed as (N, C, HW) exactly as in SN's reference code
    (``var_in`` is the *unbiased* variance over HW):

    .. math::

        \mu_{in} &= \mathrm{E}_{HW}[x], \quad
        \sigma^2_{in} = \mathrm{Var}^{\text{unbiased}}_{HW}[x]
        \quad (N, C) \\
        \mu_{ln} &= \mathrm{E}_C[\mu_{in}], \quad
        \sigma^2_{ln} = \mathrm{E}_C[\sigma^2_{in} + \mu_{in}^2] -
        \mu_{ln}^2 \quad (N, 1) \\
        \mu_{bn} &= \mathrm{E}_N[\mu_{in}], \quad
        \sigma^2_{bn} = \mathrm{E}_N[\sigma^2_{in} + \mu_{in}^2] -
        \mu_{bn}^2 \quad (1, C) \\
        \mu &= \textstyle\sum_k w_k \mu_k, \quad
        \sigma^2 = \sum_k w'_k \sigma^2_k, \quad
        w = \mathrm{softmax}(\lambda), \; w' = \mathrm{softmax}(\lambda') \\
        y &= \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta

    (paper, Eqn. (3)-(5); :math:`\lambda` = ``mean_weight``,
    :math:`\lambda'` = ``var_weight``, ones at start: equal weights).
    Because ``var_in`` is unbiased, the layer (batch) variance is the
    biased variance over (C, H, W) ((N, H, W)) plus the mean of the biased
    instance variances divided by HW - 1, as in the reference. In eval mode
    the batch scope is the running estimates; the instance and layer scopes
    always come from the sample. ``using_bn=False`` drops the batch scope
    (two weights each, the reference's setting for one image a GPU).

    Running estimates (start at 0, as in the reference): with
    ``using_moving_average`` (default), ``running <- (1 - momentum) *
    running + momentum * batch``, torch's convention: the default
    ``momentum=0.1`` is the reference's keep factor 0.9. Without it (or
    with ``momentum=None``), the paper's *batch average*: the running mean
    and variance are the mean and variance over all training batches so
    far (the reference accumulates the sums of the batch means and second
    moments and leaves the division to the user).

    **1x1 maps** (SSDLite's last extra level at 320 px): the reference's
    unbiased variance of a single value is 0/0, i.e. NaN everywhere after
    the layer. Here an instance's variance over one value is 0, its biased
    value: the instance scope then centres every value to 0, the layer and
    batch scopes are unaffected, and the output is finite. A larger map is
    computed exactly as in the reference.

    **In OpenMMLab.** :math:`\gamma, \beta` and the batch scope's running
    estimates live in a child ``bn`` (``nn.BatchNorm2d``: ``weight``,
    ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``)
    whose mode decides whether the batch scope comes from the batch or the
    running estimates. So a backbone's ``norm_eval`` (``eval()`` on every
    ``_BatchNorm``) freezes the batch scope, ``frozen_stages`` freezes SN
    with its stage, ``paramwise_cfg.norm_decay_mult`` and ``Constant`` init
    on ``_BatchNorm`` treat :math:`\gamma, \beta` as BN's (``weight`` and
    ``bias`` here refer to them, for mmcv's ``constant_init``, which also
    overrides ``last_gamma`` inside a ``ConvModule``: use a backbone's
    ``zero_init_residual`` there). The mixing logits are SN's own
    parameters and decay like conv weights (the reference decays every
    parameter; decay pulls them towards equal weights); exempt them with
    ``paramwise_cfg.custom_keys={'mean_weight': dict(decay_mult=0.),
    'var_weight': dict(decay_mult=0.)}``. The runner's ``sync_bn`` turns the
    child into a SyncBatchNorm and SN then computes the batch scope over
    all processes (the reference's ``SyncSwitchableNorm2d``, weighted by
    each process's batch), while SN itself is not replaced;
    ``efficient_conv_bn_eval`` does not fold SN (it depends on the sample).

    Implementations (``impl``), computing the same function: ``'auto'``
    makes BN's passes over the data: one native pass for the instance
    moments, the mixing on (N, C) tensors, one affine pass; in training
    one autograd node (:class:`_SwitchNormTrain`) whose backward makes one
    reduction pass and two elementwise passes. ``'plain'`` is the
    straightforward version (``torch.var_mean`` and autograd), which
    ``'auto'`` also takes with synchronised statistics and under tracing.

    Checkpoint keys (``<p>`` is e.g. ``conv.sn``)::

        <p>.mean_weight (3,) / <p>.var_weight (3,)       (2,) without BN
        <p>.bn.weight / bias (C,)
        <p>.bn.running_mean / running_var (C,) / num_batches_tracked

    Args:
        num_features (int): Channels C.
        eps (float): Added to the variance. Default: 1e-5.
        momentum (float | None): Update factor of the running estimates
            (torch's convention). Default: 0.1.
        using_moving_average (bool): Running estimates by ``momentum``;
            False for the batch average. Default: True.
        using_bn (bool): Include the batch scope. Default: True.
        last_gamma (bool): Start gamma at 0 instead of 1 (for the last norm
            of a residual branch). Default: False.
        impl (str): ``'auto'`` or ``'plain'``. Default: 'auto'.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _abbr_ = 'sn'
    # The instance and layer scopes exist for any input and the batch scope
    # of a single value per channel is that value (as in the reference,
    # where batch = instance for one image): SN is defined for any batch.
    min_values_per_channel = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        using_moving_average: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
        impl: str = 'auto',
    ) -> None:
        super().__init__(num_features)
        self.check_eps_momentum(eps, momentum)
        for name, value in (
            ('using_moving_average', using_moving_average),
            ('using_bn', using_bn),
            ('last_gamma', last_gamma),
        ):
            if not isinstance(value, bool):
                raise self.option_error(name, 'True or False', value)
        if impl not in IMPLS:
            raise self.option_error('impl', f'one of {IMPLS}', impl)
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        self.impl = impl
        self.bn = nn.BatchNorm2d(
            num_features,
            eps=eps,
            momentum=momentum if using_moving_average else None,
            track_running_stats=using_bn,
        )
        num_scopes = 3 if using_bn else 2
        self.mean_weight = nn.Parameter(torch.ones(num_scopes))
        self.var_weight = nn.Parameter(torch.ones(num_scopes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's initial state: equal mixing weights, gamma 1 (0
        with ``last_gamma``), beta 0, running estimates 0."""
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)
        nn.init.constant_(self.bn.weight, 0.0 if self.last_gamma else 1.0)
        nn.init.zeros_(self.bn.bias)
        if self.using_bn:
            self.bn.running_mean.zero_()
            self.bn.running_var.zero_()
            self.bn.num_batches_tracked.zero_()

    @property
    def using_moving_average(self) -> bool:
        return self.bn.momentum is not None

    @property
    def uses_batch_statistics(self) -> bool:
        return self.using_bn and self.bn.training

    def extra_repr(self) -> str:
        return (
            f'{self.num_features}, eps={self.eps}, momentum='
            f'{self.momentum}, using_moving_average='
            f'{self.using_moving_average}, using_bn={self.using_bn}, '
            f'last_gamma={self.last_gamma}'
        )

    def _sync_group(self):
        """The process group the batch scope is computed over, if any."""
        if (
            isinstance(self.bn, nn.SyncBatchNorm)
            and dist.is_available()
            and dist.is_initialized()
        ):
            group = self.bn.process_group or dist.group.WORLD
            if dist.get_world_size(group) > 1:
                return group
        return None

    def synced_processes(self) -> int:
        group = self._sync_group() if self.uses_batch_statistics else None
        return 1 if group is None else dist.get_world_size(group)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if x.shape[0] == 0:
            # Nothing to estimate; keep the output in the graph.
            return x * self.weight[:, None, None] + self.bias[:, None, None]
        batch_scope = self.uses_batch_statistics
        group = self._sync_group() if batch_scope else None
        params = tuple(p for p in self.parameters() if p.requires_grad)
        fast = (
            self.impl == 'auto'
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        )
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or bool(params)
        )
        if fast and needs_grad and group is None:
            y, *batch_stats = _SwitchNormTrain.apply(
                x, lambda m, v: self._mix(m, v, None), *params
            )
        else:
            moments = (
                _instance_moments_one_pass(x)
                if fast and not needs_grad
                else instance_moments(x)
            )
            scale, shift, batch_stats = self._mix(*moments, group)
            y = affine_per_sample(x, scale, shift)
        if batch_scope:
            self._update_running_stats(*batch_stats)
        return y

    def _mix(self, mean_in: Tensor, var_in: Tensor, group):
        """Instance moments (N, C) -> the per-(sample, channel) ``scale``
        and ``shift`` of ``y = x * scale + shift``, and the batch scope's
        (mean, variance) when it comes from the batch (else ``()``)."""
        mean_ln = mean_in.mean(1, keepdim=True)
        second_in = var_in + mean_in * mean_in
        var_ln = second_in.mean(1, keepdim=True) - mean_ln * mean_ln
        means, variances = [mean_in, mean_ln], [var_in, var_ln]
        batch_stats = ()
        if self.using_bn:
            if self.bn.training:
                mean_bn, var_bn = _batch_scope(mean_in, second_in, group)
                batch_stats = (mean_bn, var_bn)
            else:
                mean_bn = self.bn.running_mean.to(mean_in.dtype)
                var_bn = self.bn.running_var.to(mean_in.dtype)
            means.append(mean_bn[None])
            variances.append(var_bn[None])
        mean_w = torch.softmax(self.mean_weight.to(mean_in.dtype), 0)
        var_w = torch.softmax(self.var_weight.to(mean_in.dtype), 0)
        mean = sum(w * m for w, m in zip(mean_w, means))
        var = sum(w * v for w, v in zip(var_w, variances))
        scale = self.weight.to(mean.dtype) * torch.rsqrt(var + self.eps)
        shift = self.bias.to(mean.dtype) - mean * scale
        return scale, shift, batch_stats

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor) -> None:
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        mean, var = mean.to(bn.running_mean), var.to(bn.running_var)
        if bn.momentum is not None:
            bn.running_mean.lerp_(mean, bn.momentum)
            bn.running_var.lerp_(var, bn.momentum)
            return
        # Batch average: the mean and the variance of all batches so far
        # (through their second moments, as the reference's sums).
        factor = 1.0 / float(bn.num_batches_tracked)
        second = bn.running_var + bn.running_mean.pow(2)
        second.lerp_(var + mean.pow(2), factor)
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.copy_(second - bn.running_mean.pow(2))


def _batch_scope(
    mean_in: Tensor, second_in: Tensor, group
) -> Tuple[Tensor, Tensor]:
    """The batch scope's mean and variance (C,) from the instance means and
    second moments (N, C), over all processes of ``group`` if given
    (differentiable; weighted by each process's batch)."""
    if group is None:
        mean = mean_in.mean(0)
        return mean, second_in.mean(0) - mean * mean
    from torch.distributed.nn.functional import all_reduce

    c = mean_in.shape[1]
    local = torch.cat(
        [
            mean_in.double().sum(0),
            second_in.double().sum(0),
            mean_in.new_full((1,), mean_in.shape[0], dtype=torch.float64),
        ]
    )
    total = all_reduce(local, group=group)
    mean = total[:c] / total[-1]
    var = total[c : 2 * c] / total[-1] - mean * mean
    return mean.to(mean_in.dtype), var.to(mean_in.dtype)
