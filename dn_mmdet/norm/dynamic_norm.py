"""Dynamic Normalization (Liu, Gao and Lv, arXiv 2101.06073)."""

from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.registry import MODELS
from torch import Tensor

from ..ops import COMPOSITE_FUNCTIONS, CPU_OP_DTYPES, cpu_ops_available
from ..utils.checkpoint import check_recorded_options, record_options
from .base import BatchNormChildLayer
from .functional import UNBOUNDED, Bounds, batch_moments
from .sc_module import SCModule

MODES = ('B', 'C1', 'C2')
IMPLS = ('auto', 'op', 'composite')


@MODELS.register_module('DN')
@MODELS.register_module('DynamicNorm2d')
class DynamicNorm2d(BatchNormChildLayer):
    r"""Dynamic Normalization over a 4-D input (N, C, H, W) (DN Sec. 3.3).

    .. math::

        \tilde X = \frac{X - \mathrm{E}[X]}{\sqrt{\mathrm{Var}[X] + \epsilon}},
        \qquad Y = \tilde X \cdot \alpha + \lambda

    (the paper's equations 6 and 7). :math:`\mathrm{E}, \mathrm{Var}` are
    over (N, H, W), from the batch in training and from running estimates in
    eval, exactly as in BatchNorm2d (biased variance to normalise, unbiased
    for the running estimate, torch's momentum convention, ``momentum=None``
    for a cumulative average). There is no static affine: the SC-Module
    (:class:`SCModule`) generates it,

    * DN-B (``mode='B'``, the paper's method): per sample and channel,
      :math:`(\alpha, \lambda) \in \mathbb{R}^{N \times C}` from the input
      pooled over H and W, :math:`\mathrm{GAP}(X)`;
    * DN-C (``mode='C1'`` / ``'C2'``): shared by the batch,
      :math:`(\alpha, \lambda) \in \mathbb{R}^{C}` from
      :math:`\mathrm{E}[X]` and
      :math:`\mathrm{Std}[X]=\sqrt{\mathrm{Var}[X]+\epsilon}`,
      whose branches join after FC1 (C1) or FC2 (C2). The paper reports that
      DN-C does not train (NaN, DN Table 1).

    :math:`\alpha = \alpha_0 + \Delta\alpha`, :math:`\lambda = \lambda_0 +
    \Delta\lambda`, where the SC-Module outputs the deltas (zero at init, its
    FC2 starts at zero) and :math:`\alpha_0, \lambda_0` are constant buffers,
    1 and 0 for a fresh layer: DN starts exactly as BN with gamma 1, beta 0.
    :meth:`convert_batchnorm` sets them to a trained BN's gamma and beta, so
    the converted model computes what the BN model did without adding
    parameters (the paper's parameter counts hold).

    Running statistics live in a child ``bn`` (``nn.BatchNorm2d`` without
    affine), which is what makes the rest of OpenMMLab treat DN right: a
    backbone's ``norm_eval`` (``isinstance(m, _BatchNorm)``) freezes DN's
    statistics, the runner's ``sync_bn`` turns ``bn`` into a SyncBatchNorm
    and DN then all-reduces its statistics, while DN itself is no
    ``_BatchNorm``: it is not swapped for a SyncBN, not folded into a conv by
    ``efficient_conv_bn_eval``, and ``norm_decay_mult`` does not touch the
    SC-Module's weights (they are generator weights and decay like convs).

    Every forward computes the same function, chosen in one place,
    :meth:`implementation` (``impl``): ``'op'``, the C++ CPU op of
    :mod:`dn_mmdet.ops` (``dn_mmdet::dn_b_train`` in training,
    ``dn_mmdet::dn_b_inference`` with running statistics; DN-B on
    contiguous float32/float64 CPU input, with the SC-Module as built);
    ``'composite'``, the composite ops ``dn_mmdet::moments`` and
    ``dn_mmdet::normalize_affine`` around the SC-Module in torch (any device,
    dtype and memory format, DN-C, synchronised statistics, eval with
    autograd, ``torch.jit`` tracing); ``'auto'`` (the default) takes the op
    where it applies. Both are registered ops, so that the profiler,
    ``torch.compile`` and ``torch.export`` see them.
    :meth:`forward_clamped` applies a following clamp activation in the same
    pass (see :func:`~dn_mmdet.norm.fuse_norm_act`). An empty batch (N = 0)
    gives an empty output and leaves the running statistics alone.

    Checkpoint keys (``<prefix>`` is e.g. ``conv.dn`` in a ConvModule)::

        <prefix>.bn.running_mean / running_var / num_batches_tracked
        <prefix>.sc.fc1.weight (h, C) / fc1.bias (h,)
        <prefix>.sc.fc2.weight (2C, h/groups)
        <prefix>.base_scale (C,) / base_shift (C,)

    Args:
        num_features (int): Channels C.
        eps (float): Added to the variance. Default: 1e-5.
        momentum (float | None): Running statistics' update factor, or None
            for a cumulative average. Default: 0.1.
        r (int): Reduction of the SC-Module's FC1, ``h = max(1, C // r)``.
            Default: 16.
        g (int | str): Input channels per group of FC2, or ``'oup'`` for a
            fully connected FC2. Default: 1.
        mode (str): ``'B'`` (DN-B), ``'C1'`` or ``'C2'`` (DN-C). Default: 'B'.
        act_cfg (dict | None): Activation between FC1 and FC2; None for
            none. Default: Sigmoid.
        track_running_stats (bool): As in BatchNorm2d. Default: True.
        impl (str): ``'auto'``, ``'op'`` (the C++ op, or an error naming
            why it cannot run) or ``'composite'``. Default: 'auto'.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _abbr_ = 'dn'

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        r: int = 16,
        g: Union[int, str] = 1,
        mode: str = 'B',
        act_cfg: Optional[dict] = dict(type='Sigmoid'),
        track_running_stats: bool = True,
        impl: str = 'auto',
    ):
        _check_options(num_features, eps, momentum, r, g, mode, impl)
        super().__init__(num_features)
        self.r = r
        self.g = g
        self.mode = mode
        self.impl = impl
        self.bn = nn.BatchNorm2d(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=False,
            track_running_stats=track_running_stats,
        )
        self.sc = SCModule(num_features, r=r, g=g, act_cfg=act_cfg)
        self.register_buffer('base_scale', torch.ones(num_features))
        self.register_buffer('base_shift', torch.zeros(num_features))

    @property
    def track_running_stats(self) -> bool:
        return self.bn.track_running_stats

    @property
    def uses_batch_statistics(self) -> bool:
        """True while the statistics child is in training mode (a backbone's
        ``norm_eval`` puts it in eval), or without running statistics."""
        bn = self._stats()
        return bn.training or bn._buffers['running_mean'] is None

    def synced_processes(self) -> int:
        """Processes that pool batch statistics: the world of the
        SyncBatchNorm child (``sync_bn``) in distributed training, else 1."""
        group = self._sync_group()
        return 1 if group is None else dist.get_world_size(group)

    def extra_repr(self) -> str:
        return (
            f'{self.num_features}, mode={self.mode}, r={self.r}, '
            f'g={self.g} (fc2 groups={self.sc.fc2.groups}), '
            f'eps={self.eps}, momentum={self.momentum}, '
            f'impl={self.impl}'
        )

    # ------------------------------------------------------------------ #
    # Forward
    # ------------------------------------------------------------------ #
    def forward(self, x: Tensor) -> Tensor:
        """DN of ``x`` (N, C, H, W) -> (N, C, H, W)."""
        return self.forward_clamped(x, UNBOUNDED)

    def forward_clamped(self, x: Tensor, bounds: Bounds) -> Tensor:
        """``clamp(DN(x), *bounds)`` in DN's own output pass: what
        ``forward`` followed by a ReLU / ReLU6 / Hardtanh computes (its
        ``bounds``, see :func:`~dn_mmdet.norm.functional.clamp_bounds`).
        Called directly, it runs no forward hooks of this layer: a fused
        parent (:func:`~dn_mmdet.norm.fuse_norm_act`) calls it only where
        there are none.

        Args:
            x (Tensor): (N, C, H, W).
            bounds (tuple[float, float]): ``(lo, hi)``; ``-inf``/``inf``
                where open.

        Returns:
            Tensor: (N, C, H, W), ``x``'s dtype.
        """
        self.check_input(x)
        if x.numel() == 0 and self._sync_group() is None:
            return self._forward_empty(x)
        impl = self.implementation(x)
        if impl == 'op':
            return self._forward_op(x, bounds)
        return self._forward_composite(x, bounds)

    def implementation(self, x: Tensor) -> str:
        """Which implementation computes ``self(x)`` now: ``'op'`` or
        ``'composite'`` (see the class docstring); the one place that
        chooses. With ``impl='op'``, a forward the op cannot compute raises
        a ``ValueError`` saying why."""
        if self.impl == 'composite':
            return 'composite'
        refusal = self._op_refusal(x)
        if refusal is None:
            return 'op'
        if self.impl == 'op':
            raise ValueError(
                f"{self.describe()}: impl='op' cannot compute "
                f'this forward: {refusal}'
            )
        return 'composite'

    def _op_refusal(self, x: Tensor) -> Optional[str]:
        """Why the C++ op cannot compute ``self(x)``, or None if it can."""
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return 'torch.jit traces and scripts ATen ops (ONNX)'
        if self.mode != 'B':
            return f'the op computes DN-B, this layer is DN-{self.mode}'
        if not x.is_cpu or x.dtype not in CPU_OP_DTYPES:
            return (
                'the op takes float32/float64 CPU input, got '
                f'{x.dtype} on {x.device}'
            )
        if not x.is_contiguous():
            return 'the op takes contiguous input (not channels-last)'
        batch_stats = self.uses_batch_statistics
        if batch_stats and self._sync_group() is not None:
            return 'statistics are synchronised across processes'
        sc = self._modules['sc']
        if (
            not batch_stats
            and torch.is_grad_enabled()
            and (
                x.requires_grad
                or any(p.requires_grad for p in sc.parameters())
            )
        ):
            return (
                'the op has no backward with running statistics '
                '(eval under autograd)'
            )
        if sc.kernel_weights() is None:
            return (
                'the SC-Module is not as the op computes it (FC1 with '
                'bias, sigmoid, FC2), or forward hooks watch it'
            )
        if any(
            t is not None and t.dtype != x.dtype for t in self._op_tensors()
        ):
            return f"the layer's weights and buffers are not all {x.dtype}"
        if not cpu_ops_available():
            return 'the C++ kernel could not be built (see the warning)'
        return None

    def _op_tensors(self) -> Tuple[Optional[Tensor], ...]:
        """The C++ op's tensors besides ``x``: FC1's weight and bias, FC2's
        weight, the base affine and the running statistics (None without
        them). Read from the modules' dicts: each ``nn.Module.__getattr__``
        costs 1-2 us on a slow vCPU, and every forward asks."""
        sc = self._modules['sc']._modules
        own, stats = self._buffers, self._stats()._buffers
        return (
            sc['fc1']._parameters['weight'],
            sc['fc1']._parameters['bias'],
            sc['fc2']._parameters['weight'],
            own['base_scale'],
            own['base_shift'],
            stats['running_mean'],
            stats['running_var'],
        )

    def _forward_op(self, x: Tensor, bounds: Bounds) -> Tensor:
        """The C++ op (see :meth:`implementation`)."""
        w1, b1, w2, base_scale, base_shift, r_mean, r_var = self._op_tensors()
        groups = self._modules['sc']._modules['fc2'].groups
        lo, hi = bounds
        if self.uses_batch_statistics:
            y, mean, var = torch.ops.dn_mmdet.dn_b_train(
                x, w1, b1, w2, groups, base_scale, base_shift, self.eps, lo, hi
            )[:3]
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
            return y
        return torch.ops.dn_mmdet.dn_b_inference(
            x,
            w1,
            b1,
            w2,
            groups,
            base_scale,
            base_shift,
            r_mean,
            r_var,
            self.eps,
            lo,
            hi,
        )

    def _forward_composite(self, x: Tensor, bounds: Bounds) -> Tensor:
        """The composite ops around the SC-Module (see
        :meth:`implementation`)."""
        ops = (
            COMPOSITE_FUNCTIONS
            if torch.jit.is_tracing()
            else torch.ops.dn_mmdet
        )
        if self.uses_batch_statistics:
            mean_nc, var_nc = ops.moments(x)
            mean, var, count = self._batch_moments(mean_nc, var_nc, x)
            if x.numel() == 0 and not count:
                # Synchronised, and every process's batch was empty. (A
                # process whose batch alone is empty joined the others'
                # all-reduce and updates its statistics as they do, as
                # SyncBatchNorm: the processes' statistics stay equal.)
                return self._forward_empty(x)
            self._update_running_stats(mean, var, count)
            pooled = mean_nc
        else:
            mean, var = self.bn.running_mean, self.bn.running_var
            pooled = None
            if self.mode == 'B':
                pooled = x.mean(
                    dim=(2, 3),
                    dtype=torch.promote_types(x.dtype, torch.float32),
                )
        alpha, lam = self._affine(pooled, mean, var)
        return ops.normalize_affine(
            x, mean, var, alpha, lam, self.eps, *bounds
        )

    def _forward_empty(self, x: Tensor) -> Tensor:
        """An empty output for an input without values. The statistics stay
        as they are: there is nothing to estimate them from. (BatchNorm
        leaves them too, but counts the batch in ``num_batches_tracked``.)
        The output still comes through the SC-Module, so that its
        parameters get (zero) gradients as in any other step, which
        DistributedDataParallel expects. (A clamp would not change it.)"""
        pooled = x.new_zeros(x.shape[:2], dtype=self.base_scale.dtype)
        alpha, lam = self._affine_from_pooled(pooled)
        y = x * alpha[:, :, None, None] + lam[:, :, None, None]
        return y.to(x.dtype)

    def _affine_from_pooled(self, pooled: Tensor) -> Tuple[Tensor, Tensor]:
        """DN-B's alpha and lambda, (N, C), from the pooled input (N, C)
        (in the SC-Module's dtype: that of a ``.half()`` model)."""
        alpha_delta, lambda_delta = self.sc(pooled.to(self.base_scale.dtype))
        return alpha_delta + self.base_scale, lambda_delta + self.base_shift

    def _affine(
        self, pooled: Optional[Tensor], mean: Tensor, var: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """alpha and lambda: (N, C) from the pooled input (DN-B) or (1, C)
        from the statistics the layer normalises with (DN-C)."""
        if self.mode == 'B':
            return self._affine_from_pooled(pooled)
        dtype = self.base_scale.dtype
        alpha_delta, lambda_delta = self.sc.forward_dn_c(
            mean.to(dtype), (var + self.eps).sqrt().to(dtype), self.mode
        )
        return alpha_delta + self.base_scale, lambda_delta + self.base_shift

    def _sync_group(self):
        """The process group to all-reduce batch statistics over: that of a
        SyncBatchNorm child (``sync_bn``) in training, in a distributed run
        of more than one process; else None."""
        bn = self._stats()
        if not (
            bn.training
            and isinstance(bn, nn.SyncBatchNorm)
            and dist.is_available()
            and dist.is_initialized()
        ):
            return None
        group = bn.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _batch_moments(self, mean_nc: Tensor, var_nc: Tensor, x: Tensor):
        """Batch mean and biased variance (C,) and how many values per
        channel they come from (a tensor when all-reduced)."""
        group = self._sync_group()
        if group is None:
            mean, var = batch_moments(mean_nc, var_nc)
            return mean, var, x.numel() // x.shape[1]
        mean, var, samples = _all_reduce_moments(mean_nc, var_nc, group)
        return mean, var, samples * (x.shape[2] * x.shape[3])

    def _count_batch(self) -> float:
        """As BatchNorm in training: count the batch and return how far the
        running statistics move towards its statistics (the momentum, or
        ``1 / batches`` for a cumulative average); 0 when they do not."""
        bn = self._stats()
        if not (bn.training and bn.track_running_stats):
            return 0.0
        bn.num_batches_tracked.add_(1)
        return (
            1.0 / float(bn.num_batches_tracked)
            if bn.momentum is None
            else bn.momentum
        )

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count) -> None:
        """Count the batch, then move the running statistics towards its
        mean and unbiased variance (``count`` values per channel)."""
        factor = self._count_batch()
        if not factor:
            return
        bn = self.bn
        if torch.is_tensor(count):
            unbiased = var * (count / (count - 1).clamp_min(1)).to(var.dtype)
        else:
            unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)

    # ------------------------------------------------------------------ #
    # Checkpoints record the options (dn_mmdet/utils/checkpoint.py)
    # ------------------------------------------------------------------ #
    def function_options(self) -> dict:
        """The options that change what the layer computes from the same
        weights: ``mode``, ``r``, ``g``, ``eps`` and the SC-Module's
        activation (its repr)."""
        return dict(
            mode=self.mode,
            r=self.r,
            g=self.g,
            eps=self.eps,
            act=repr(self.sc.act),
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        record_options(destination, prefix, self.function_options())

    def _load_from_state_dict(self, state_dict, prefix, metadata, *rest):
        check_recorded_options(
            metadata, prefix, self.function_options(), self.describe()
        )
        super()._load_from_state_dict(state_dict, prefix, metadata, *rest)

    # ------------------------------------------------------------------ #
    # Converters (dn_mmdet/norm/converters.py)
    # ------------------------------------------------------------------ #
    @classmethod
    def from_batchnorm(
        cls, bn: nn.modules.batchnorm._BatchNorm, **dn_kwargs
    ) -> 'DynamicNorm2d':
        """A DN layer computing what ``bn`` computes; see
        :func:`~dn_mmdet.norm.converters.from_batchnorm`."""
        from .converters import from_batchnorm

        return from_batchnorm(bn, layer_type=cls, **dn_kwargs)

    @classmethod
    def convert_batchnorm(cls, module: nn.Module, **dn_kwargs) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm of ``module`` (not those
        inside norm layers such as DN) by an equivalent DN layer; see
        :func:`~dn_mmdet.norm.converters.convert_batchnorm`."""
        from .converters import convert_batchnorm

        return convert_batchnorm(module, layer_type=cls, **dn_kwargs)

    @classmethod
    def convert_batchnorm_state_dict(
        cls, state_dict: dict, prefix: str = '', **dn_kwargs
    ) -> dict:
        """A BN model's state dict as that of the same model built with DN;
        see :func:`~dn_mmdet.norm.converters.convert_batchnorm_state_dict`.
        """
        from .converters import convert_batchnorm_state_dict

        return convert_batchnorm_state_dict(
            state_dict, prefix, layer_type=cls, **dn_kwargs
        )


def _all_reduce_moments(mean_nc: Tensor, var_nc: Tensor, group):
    """Batch mean and biased variance over all processes (differentiable),
    and the number of samples they come from (a tensor).

    Every sample has the same H*W count on every process, so the raw first
    and second moments of the samples can be summed with one all-reduce;
    float64 keeps ``E[x^2] - E[x]^2`` accurate. A process with an empty
    batch adds zeros (and must take part, or the others would wait).
    """
    from torch.distributed.nn.functional import all_reduce

    n = mean_nc.new_tensor(float(mean_nc.shape[0]), dtype=torch.float64)
    m1 = mean_nc.double().sum(0)
    m2 = (var_nc.double() + mean_nc.double().pow(2)).sum(0)
    total = all_reduce(torch.cat([m1, m2, n.view(1)]), group=group)
    c = mean_nc.shape[1]
    count = total[-1]
    mean = total[:c] / count
    var = (total[c : 2 * c] / count - mean.pow(2)).clamp_min(0)
    return mean.to(mean_nc.dtype), var.to(var_nc.dtype), count.detach()


def _check_options(num_features, eps, momentum, r, g, mode, impl) -> None:
    where = f'DN(num_features={num_features!r})'
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(
            f'{where}: r (FC1 reduction) must be an int >= 1, got {r!r}'
        )
    if g != 'oup' and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
        raise ValueError(
            f'{where}: g (input channels per group of FC2) must '
            f"be a positive int or 'oup', got {g!r}"
        )
    if mode not in MODES:
        raise ValueError(
            f'{where}: unknown mode {mode!r}; expected one of '
            f'{MODES} (B = DN-B, C1/C2 = DN-C)'
        )
    if impl not in IMPLS:
        raise ValueError(
            f'{where}: unknown impl {impl!r}; expected one of {IMPLS}'
        )
    if not eps > 0:
        raise ValueError(f'{where}: eps must be > 0, got {eps!r}')
    if momentum is not None and not 0 <= momentum <= 1:
        raise ValueError(
            f'{where}: momentum must be in [0, 1] or None, got {momentum!r}'
        )
