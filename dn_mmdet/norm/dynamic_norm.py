"""Dynamic Normalization (Liu, Gao and Lv, arXiv 2101.06073)."""
from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.registry import MODELS
from torch import Tensor

from ..ops import dn_cpu
from .activation_fusion import fuse_on_first_forward, mark_clamped
from .base import BatchNormChildLayer
from ..utils.checkpoint import check_recorded_options, record_options
from .functional import (Bounds, DNBTensors, activation_bounds, affine_per_sample,
                         batch_moments, dn_b_inference_cpu,
                         dn_b_kernel_applies, dn_b_train,
                         dn_b_train_cpu, fold_affine, fused_enabled, inverse_std,
                         kernel_accepts, normalize_act_cpu,
                         per_sample_moments)
from .prepared_inference import PREPARES, PreparedInference
from .sc_module import SCModule

MODES = ('B', 'C1', 'C2')


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
      :math:`\mathrm{E}[X]` and :math:`\mathrm{Std}[X]=\sqrt{\mathrm{Var}[X]+\epsilon}`,
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

    Every forward computes the same function; :meth:`_select_path` picks
    how (the fused training node of DN-B, the C++ CPU kernel without
    autograd, or plain torch ops), and ``DN_MMDET_FUSED=0`` keeps it to
    plain torch ops. An empty batch (N = 0) gives an empty output and leaves
    the running statistics alone.

    Checkpoint keys (``<prefix>`` is e.g. ``conv.dn`` in a ConvModule)::

        <prefix>.bn.running_mean / running_var / num_batches_tracked
        <prefix>.sc.fc1.weight (h, C) / fc1.bias (h,) / fc2.weight (2C, h/groups)
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

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """
    _abbr_ = 'dn'

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 r: int = 16,
                 g: Union[int, str] = 1,
                 mode: str = 'B',
                 act_cfg: Optional[dict] = dict(type='Sigmoid'),
                 track_running_stats: bool = True):
        _check_options(num_features, eps, momentum, r, g, mode)
        super().__init__(num_features)
        self.r = r
        self.g = g
        self.mode = mode
        self.bn = nn.BatchNorm2d(
            num_features, eps=eps, momentum=momentum, affine=False,
            track_running_stats=track_running_stats)
        self.sc = SCModule(num_features, r=r, g=g, act_cfg=act_cfg)
        self.register_buffer('base_scale', torch.ones(num_features))
        self.register_buffer('base_shift', torch.zeros(num_features))
        # A clamp applied to the output, set by fuse_activation.
        self.activation: Optional[nn.Module] = None
        # The kernel call of the last forward in eval, while it applies.
        self._prepared: Optional[PreparedInference] = None
        fuse_on_first_forward(self)

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
        return (f'{self.num_features}, mode={self.mode}, r={self.r}, '
                f'g={self.g} (fc2 groups={self.sc.fc2.groups}), '
                f'eps={self.eps}, momentum={self.momentum}')

    def fuse_activation(self, act: nn.Module) -> None:
        """Apply ``act`` (ReLU, ReLU6 or Hardtanh) to the output from now on,
        so that inference applies the affine and the clamp in one pass.

        Args:
            act (nn.Module): The activation that followed this layer; the
                caller stops applying it.
        """
        if activation_bounds(act) is None:
            raise ValueError(
                f'{self.describe()}: only clamp activations (ReLU, ReLU6, '
                f'Hardtanh) can be fused, got {type(act).__name__}')
        if self.activation is not None:
            raise ValueError(f'{self.describe()}: already has the fused '
                             f'activation {self.activation}')
        self.activation = act

    # ------------------------------------------------------------------ #
    # Forward
    # ------------------------------------------------------------------ #
    def forward(self, x: Tensor) -> Tensor:
        prepared = self._prepared
        if prepared is not None:
            y = prepared(x)
            if y is not None:
                return y
            self._prepared = None
        bounds = self._activation_bounds()
        y = self._forward(x, bounds)
        if bounds is not None:
            # The clamp this layer took over then passes y through as it is.
            mark_clamped(y, bounds)
        return y

    def _forward(self, x: Tensor, bounds: Optional[Bounds]) -> Tensor:
        self.check_input(x)
        tensors = self._dn_b_tensors() if self.mode == 'B' else None
        path = self._select_path(x, tensors)
        if path == 'dn_b_kernel':
            if PREPARES and not torch.is_grad_enabled():
                # Later forwards repeat this call while it applies.
                self._prepared = PreparedInference(self, tensors, bounds)
            return dn_b_inference_cpu(x, tensors, self.eps, bounds)
        if path == 'train_kernel':
            return dn_b_train_cpu(x, tensors, self.eps, self._count_batch(),
                                  bounds)
        if path == 'empty':
            return self._forward_empty(x)
        if path == 'train_node':
            params = tuple(p for p in self.sc.parameters() if p.requires_grad)
            y, mean, var = dn_b_train(x, self.eps, self._affine_from_pooled,
                                      params)
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
            return self._activate(y)

        # 'kernel' and 'torch': statistics and SC-Module in torch.
        if self.uses_batch_statistics:
            mean_nc, var_nc = per_sample_moments(x)
            mean, var, count = self._batch_moments(mean_nc, var_nc, x)
            if x.numel() == 0 and not count:
                # Synchronised, and every process's batch was empty. (A
                # process whose batch alone is empty joined the others'
                # all-reduce and updates its statistics as they do, as
                # SyncBatchNorm: the processes' statistics stay equal.)
                return self._forward_empty(x)
            self._update_running_stats(mean.detach(), var.detach(), count)
            pooled = mean_nc
        else:
            mean, var = self.bn.running_mean, self.bn.running_var
            pooled = x.mean(dim=(2, 3)) if self.mode == 'B' else None
        alpha, lam = self._affine(pooled, mean, var)
        if path == 'kernel':
            return normalize_act_cpu(x, alpha, lam, mean, var, self.eps,
                                     bounds)
        scale, shift = fold_affine(alpha, lam, mean,
                                   inverse_std(var, self.eps))
        return self._activate(affine_per_sample(x, scale, shift))

    def _select_path(self, x: Tensor, tensors: Optional[DNBTensors]) -> str:
        """How this forward is computed; the one place that decides.
        ``tensors``: :meth:`_dn_b_tensors` (DN-B; else None), which the
        kernel paths then take.

        * ``'empty'``: no values (N = 0): :meth:`_forward_empty`.
        * ``'dn_b_kernel'``: DN-B with running statistics, no autograd, on
          the CPU: the whole layer is one call of the C++ kernel.
        * ``'kernel'``: other forwards without autograd on the CPU (DN-C,
          batch statistics, an SC-Module the kernel does not implement or
          that forward hooks watch): statistics and SC-Module in torch, then
          the normalise-affine-clamp pass in C++.
        * ``'train_kernel'``: DN-B with batch statistics under autograd on
          the CPU: one autograd node whose forward and backward are each
          one call of the C++ kernel, the fused clamp included.
        * ``'train_node'``: DN-B with batch statistics under autograd
          elsewhere (CUDA, half precision, channels-last, an SC-Module the
          kernel does not implement or that hooks watch): the fused autograd
          node (one statistics pass, one output pass) in ATen.
        * ``'torch'``: plain, differentiable torch ops, for everything else:
          synchronised statistics, DN-C training, eval with autograd,
          ``DN_MMDET_FUSED=0``, and what exporters and compilers see
          (tracing, scripting, ``torch.compile``). The kernel-less cases
          (CUDA, half precision, channels-last, no C++ compiler) take it
          too.
        """
        if (torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.compiler.is_compiling()):
            return 'torch'  # before reading x's shape: a traced value
        batch_stats = self.uses_batch_statistics
        synced = batch_stats and self._sync_group() is not None
        if x.numel() == 0 and not synced:
            return 'empty'
        if synced or not fused_enabled():
            return 'torch'
        needs_autograd = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad
                                   for p in self.sc.parameters()))
        kernel = kernel_accepts(x) and dn_cpu.load()
        whole_layer = kernel and dn_b_kernel_applies(x, tensors)
        if not needs_autograd:
            if not kernel:
                return 'torch'
            return ('dn_b_kernel' if whole_layer and not batch_stats else
                    'kernel')
        if self.mode == 'B' and batch_stats:
            return 'train_kernel' if whole_layer else 'train_node'
        return 'torch'

    def _dn_b_tensors(self) -> Optional[DNBTensors]:
        """What the C++ kernel reads of this layer besides the input, or
        None where it does not implement the SC-Module (see
        :meth:`SCModule.kernel_weights`). Read from the modules' dicts, not
        as attributes: on a slow vCPU each ``nn.Module.__getattr__`` costs
        1-2 us, and at small maps a dozen of them per layer were a third of
        DN's extra time."""
        weights = self._modules['sc'].kernel_weights()
        if weights is None:
            return None
        own, stats = self._buffers, self._stats()._buffers
        return DNBTensors(*weights, own['base_scale'], own['base_shift'],
                          stats['running_mean'], stats['running_var'])

    def _apply(self, fn, *args, **kwargs):
        # .to() / .double() may change the tensors in place, which the
        # prepared call would not see.
        self._prepared = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # A prepared call is this process's: copies and pickles prepare
        # their own on their first forward.
        state = super().__getstate__()
        state['_prepared'] = None
        return state

    def _forward_empty(self, x: Tensor) -> Tensor:
        """An empty output for an input without values. The statistics stay
        as they are: there is nothing to estimate them from. (BatchNorm
        leaves them too, but counts the batch in ``num_batches_tracked``.)
        The output still comes through the SC-Module, so that its
        parameters get (zero) gradients as in any other step, which
        DistributedDataParallel expects."""
        pooled = x.new_zeros(x.shape[:2], dtype=self.base_scale.dtype)
        alpha, lam = self._affine_from_pooled(pooled)
        y = x * alpha[:, :, None, None] + lam[:, :, None, None]
        return self._activate(y.to(x.dtype))

    def _affine_from_pooled(self, pooled: Tensor) -> Tuple[Tensor, Tensor]:
        """DN-B's alpha and lambda, (N, C), from the pooled input (N, C)."""
        alpha_delta, lambda_delta = self.sc(pooled)
        return alpha_delta + self.base_scale, lambda_delta + self.base_shift

    def _affine(self, pooled: Optional[Tensor], mean: Tensor,
                var: Tensor) -> Tuple[Tensor, Tensor]:
        """alpha and lambda: (N, C) from the pooled input (DN-B) or (1, C)
        from the statistics the layer normalises with (DN-C)."""
        if self.mode == 'B':
            return self._affine_from_pooled(pooled)
        alpha_delta, lambda_delta = self.sc.forward_dn_c(
            mean, (var + self.eps).sqrt(), self.mode)
        return alpha_delta + self.base_scale, lambda_delta + self.base_shift

    def _activation_bounds(self) -> Optional[Bounds]:
        # _modules: once fused, ``activation`` is a child module, which an
        # attribute lookup finds only through nn.Module.__getattr__ (slow).
        act = self._modules.get('activation')
        return None if act is None else activation_bounds(act)

    def _activate(self, y: Tensor) -> Tensor:
        return y if self.activation is None else self.activation(y)

    def _sync_group(self):
        """The process group to all-reduce batch statistics over: that of a
        SyncBatchNorm child (``sync_bn``) in training, in a distributed run
        of more than one process; else None."""
        bn = self._stats()
        if not (bn.training and isinstance(bn, nn.SyncBatchNorm)
                and dist.is_available() and dist.is_initialized()):
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
        return (1.0 / float(bn.num_batches_tracked)
                if bn.momentum is None else bn.momentum)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor,
                              count) -> None:
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
        return dict(mode=self.mode, r=self.r, g=self.g, eps=self.eps,
                    act=repr(self.sc.act))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        record_options(destination, prefix, self.function_options())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        check_recorded_options(local_metadata, prefix,
                               self.function_options(), self.describe())
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ #
    # Converters (dn_mmdet/norm/converters.py)
    # ------------------------------------------------------------------ #
    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm,
                       **dn_kwargs) -> 'DynamicNorm2d':
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
    def convert_batchnorm_state_dict(cls, state_dict: dict, prefix: str = '',
                                     **dn_kwargs) -> dict:
        """A BN model's state dict as that of the same model built with DN;
        see :func:`~dn_mmdet.norm.converters.convert_batchnorm_state_dict`.
        """
        from .converters import convert_batchnorm_state_dict
        return convert_batchnorm_state_dict(state_dict, prefix,
                                            layer_type=cls, **dn_kwargs)

    @classmethod
    def fuse_activations(cls, module: nn.Module) -> int:
        """Move each clamp activation that takes a DN layer's output (and
        only it) into the DN layer; see
        :func:`~dn_mmdet.norm.activation_fusion.fuse_activations`. (Models
        get this on their first forward.)"""
        from .activation_fusion import fuse_activations
        return fuse_activations(module, layer_type=cls)


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
    var = (total[c:2 * c] / count - mean.pow(2)).clamp_min(0)
    return mean.to(mean_nc.dtype), var.to(var_nc.dtype), count.detach()


def _check_options(num_features, eps, momentum, r, g, mode) -> None:
    where = f'DN(num_features={num_features!r})'
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f'{where}: r (FC1 reduction) must be an int >= 1, '
                         f'got {r!r}')
    if g != 'oup' and (not isinstance(g, int) or isinstance(g, bool)
                       or g < 1):
        raise ValueError(f"{where}: g (input channels per group of FC2) must "
                         f"be a positive int or 'oup', got {g!r}")
    if mode not in MODES:
        raise ValueError(f'{where}: unknown mode {mode!r}; expected one of '
                         f'{MODES} (B = DN-B, C1/C2 = DN-C)')
    if not eps > 0:
        raise ValueError(f'{where}: eps must be > 0, got {eps!r}')
    if momentum is not None and not 0 <= momentum <= 1:
        raise ValueError(f'{where}: momentum must be in [0, 1] or None, '
                         f'got {momentum!r}')
