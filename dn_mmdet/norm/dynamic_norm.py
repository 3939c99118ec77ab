"""Dynamic Normalization (Liu, Gao and Lv, arXiv 2101.06073)."""
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.registry import MODELS
from torch import Tensor

from .functional import (activation_bounds, affine_per_sample,
                         batch_moments, dn_b_inference, dn_b_train,
                         fold_affine, fused_enabled, inverse_std,
                         normalize_act_inference, per_sample_moments)
from .base import NormLayer
from .reference import dn_c_descriptor_scales, dynamic_norm_reference
from .sc_module import SCModule

MODES = ('B', 'C1', 'C2')
IMPLS = ('auto', 'plain', 'reference')


@MODELS.register_module('DN')
@MODELS.register_module('DynamicNorm2d')
class DynamicNorm2d(NormLayer):
    r"""Dynamic Normalization over a 4-D input (N, C, H, W).

    .. math::

        \tilde X = \frac{X - \mathrm{E}[X]}{\sqrt{\mathrm{Var}[X] + \epsilon}},
        \qquad Y = \tilde X \cdot \alpha + \lambda

    :math:`\mathrm{E}, \mathrm{Var}` are over (N, H, W), from the batch in
    training and from running estimates in eval, exactly as in BatchNorm2d
    (biased variance to normalise, unbiased for the running estimate, torch's
    momentum convention, ``momentum=None`` for a cumulative average). There
    is no static affine: the SC-Module (:class:`SCModule`) generates it,

    * DN-B (``mode='B'``, the paper's method): per sample and channel,
      :math:`(\alpha, \lambda) \in \mathbb{R}^{N \times C}` from the input
      pooled over H and W, :math:`\mathrm{GAP}(X)`;
    * DN-C (``mode='C1'`` / ``'C2'``): shared by the batch,
      :math:`(\alpha, \lambda) \in \mathbb{R}^{C}` from
      :math:`\mathrm{E}[X]` and :math:`\mathrm{Std}[X]=\sqrt{\mathrm{Var}[X]+\epsilon}`,
      whose branches join after FC1 (C1) or FC2 (C2). The paper reports that
      DN-C does not train (NaN).

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

    Implementations (``impl``), all computing the same function:
    ``'auto'`` (default) trains DN-B through one fused autograd node
    (:func:`~dn_mmdet.norm.functional.dn_b_train`), runs inference (no
    autograd) on the CPU as one call of a C++ op (pooling, SC-Module and one
    normalise-affine-clamp pass,
    :func:`~dn_mmdet.norm.functional.dn_b_inference`) and uses plain
    torch ops elsewhere (DN-C training, synchronised statistics); ``'plain'``
    always uses plain torch ops (also forced for ``'auto'`` by
    ``DN_MMDET_FUSED=0``);
    ``'reference'`` is the straightforward one
    (:func:`~dn_mmdet.norm.reference.dynamic_norm_reference`), kept for
    tests and benchmarks.

    :meth:`fuse_activations` moves a ReLU/ReLU6 that follows DN in a
    ``ConvModule`` into DN (child ``activation``), so that inference applies
    the affine and the clamp in one pass; MobileNetV2DN does it for all its
    layers. Outputs and checkpoint keys do not change.

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
        act_cfg (dict): Activation between FC1 and FC2. Default: Sigmoid.
        track_running_stats (bool): As in BatchNorm2d. Default: True.
        impl (str): ``'auto'``, ``'plain'`` or ``'reference'``.
            Default: 'auto'.

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
                 act_cfg: dict = dict(type='Sigmoid'),
                 track_running_stats: bool = True,
                 impl: str = 'auto'):
        super().__init__(num_features)
        _check_args(num_features, eps, momentum, r, g, mode, impl)
        self.num_features = num_features
        self.r = r
        self.g = g
        self.mode = mode
        self.impl = impl
        self.bn = nn.BatchNorm2d(
            num_features, eps=eps, momentum=momentum, affine=False,
            track_running_stats=track_running_stats)
        self.sc = SCModule(num_features, r=r, g=g, act_cfg=act_cfg)
        self.register_buffer('base_scale', torch.ones(num_features))
        self.register_buffer('base_shift', torch.zeros(num_features))
        self.layer_name: Optional[str] = None
        # Set by fuse_activation: a clamp applied to the output.
        self.activation: Optional[nn.Module] = None

    # BN's hyper-parameters live on the statistics module.
    @property
    def eps(self) -> float:
        return self.bn.eps

    @property
    def momentum(self) -> Optional[float]:
        return self.bn.momentum

    @property
    def track_running_stats(self) -> bool:
        return self.bn.track_running_stats

    def extra_repr(self) -> str:
        return (f'{self.num_features}, mode={self.mode}, r={self.r}, '
                f'g={self.g} (fc2 groups={self.sc.fc2.groups}), '
                f'eps={self.eps}, momentum={self.momentum}')

    def _describe(self) -> str:
        where = f' "{self.layer_name}"' if self.layer_name else ''
        return f'DN layer{where} ({self.num_features} channels, mode {self.mode})'

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'{self._describe()}: expected a 4-D input '
                             f'(N, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.num_features:
            raise ValueError(
                f'{self._describe()}: expected {self.num_features} input '
                f'channels, got {x.shape[1]} (input shape {tuple(x.shape)})')

    def fuse_activation(self, act: nn.Module) -> None:
        """Apply ``act`` (ReLU, ReLU6 or Hardtanh) to the output from now on.

        Args:
            act (nn.Module): The activation that followed this layer; the
                caller stops applying it.
        """
        if activation_bounds(act) is None:
            raise ValueError(
                f'{self._describe()}: only clamp activations (ReLU, ReLU6, '
                f'Hardtanh) can be fused, got {type(act).__name__}')
        if self.activation is not None:
            raise ValueError(f'{self._describe()}: already has the fused '
                             f'activation {self.activation}')
        self.activation = act

    @classmethod
    def fuse_activations(cls, module: nn.Module) -> int:
        """Fuse each ConvModule's activation into its DN layer.

        Only where the activation directly follows DN (``order`` conv, norm,
        act or norm, act, conv) and is a clamp (ReLU, ReLU6, Hardtanh): the
        ConvModule's ``activate`` becomes ``nn.Identity`` and DN applies the
        clamp in its affine pass (see :meth:`fuse_activation`). Outputs and
        state dicts stay the same. Afterwards ``ConvModule.forward(x,
        activate=False)`` no longer skips the activation.

        Returns:
            int: How many activations were fused.
        """
        fused = 0
        for m in module.modules():
            if not (isinstance(m, ConvModule) and m.with_norm
                    and m.with_activation and isinstance(m.norm, cls)
                    and m.norm.activation is None
                    and m.order.index('act') == m.order.index('norm') + 1
                    and activation_bounds(m.activate) is not None):
                continue
            m.norm.fuse_activation(m.activate)
            m.activate = nn.Identity()
            fused += 1
        return fused

    def _scale_shift(self, pooled: Tensor):
        """DN-B's SC-Module plus the base: (N, C) -> alpha, lambda."""
        alpha_delta, lambda_delta = self.sc(pooled)
        return alpha_delta + self.base_scale, lambda_delta + self.base_shift

    def _update_factor(self) -> float:
        """Counts the batch, returns the running statistics' update factor
        (torch's BatchNorm convention)."""
        self.bn.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.bn.num_batches_tracked)
        return self.momentum

    # Local stand-in for H1's NormLayer API (the hooks' contract).
    @property
    def uses_batch_statistics(self) -> bool:
        return self.bn.training or not self.bn.track_running_stats

    def synced_processes(self) -> int:
        group = self._sync_group()
        return 1 if group is None else dist.get_world_size(group)

    def _sync_group(self):
        """The process group to all-reduce statistics over, if any."""
        if (isinstance(self.bn, nn.SyncBatchNorm) and dist.is_available()
                and dist.is_initialized()):
            group = self.bn.process_group or dist.group.WORLD
            if dist.get_world_size(group) > 1:
                return group
        return None

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == 'reference':
            return self.forward_reference(x)
        self._check_input(x)
        use_batch_stats = self.bn.training or not self.track_running_stats
        update_running = self.bn.training and self.track_running_stats
        factor = self._update_factor() if update_running else 0.0

        if not use_batch_stats:
            mean, var = self.bn.running_mean, self.bn.running_var
            if self.mode == 'B' and self._inference_only(x):
                y = dn_b_inference(x, self.sc, self.base_scale,
                                   self.base_shift, mean, var, self.eps,
                                   self._activation_bounds())
                if y is not None:
                    return y
            return self._normalize(x, mean, var,
                                   None if self.mode != 'B' else
                                   x.mean(dim=(2, 3)))

        group = self._sync_group() if self.bn.training else None
        if (self.mode == 'B' and self.impl == 'auto' and fused_enabled()
                and group is None and torch.is_grad_enabled()
                and not torch.jit.is_tracing()
                and not torch.jit.is_scripting()):
            params = tuple(p for p in self.sc.parameters() if p.requires_grad)
            y, mean, var = dn_b_train(x, self.eps, self._scale_shift, params)
            y = self._activate(y)
        else:
            mean_nc, var_nc = per_sample_moments(x)
            mean, var = (batch_moments(mean_nc, var_nc) if group is None
                         else _all_reduce_moments(mean_nc, var_nc, group))
            y = self._normalize(x, mean, var, mean_nc)
        if update_running:
            self._update_running_stats(mean.detach(), var.detach(), x,
                                       factor, group)
        return y

    def _inference_only(self, x: Tensor) -> bool:
        """Whether no gradient can flow (so the C++ kernel may run)."""
        return self.impl == 'auto' and not (
            torch.is_grad_enabled() and
            (x.requires_grad or any(p.requires_grad
                                    for p in self.sc.parameters())))

    def _activation_bounds(self):
        return (None if self.activation is None else
                activation_bounds(self.activation))

    def _activate(self, y: Tensor) -> Tensor:
        return y if self.activation is None else self.activation(y)

    def _normalize(self, x: Tensor, mean: Tensor, var: Tensor,
                   pooled: Optional[Tensor]) -> Tensor:
        """One elementwise pass: X~ * alpha + lambda = x * scale + shift,
        and the fused activation (in the same pass without autograd)."""
        if self.mode == 'B':
            alpha, lam = self._scale_shift(pooled)
        else:
            alpha_delta, lambda_delta = dn_c_descriptor_scales(
                self.sc, mean, (var + self.eps).sqrt(), self.mode)
            alpha = alpha_delta + self.base_scale
            lam = lambda_delta + self.base_shift
        if self._inference_only(x):
            return normalize_act_inference(x, alpha, lam, mean, var,
                                           self.eps, self._activation_bounds())
        scale, shift = fold_affine(alpha, lam, mean,
                                   inverse_std(var, self.eps))
        return self._activate(affine_per_sample(x, scale, shift))

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, x: Tensor,
                              factor: float, group) -> None:
        count = x.numel() // x.shape[1]
        if group is not None:
            count *= dist.get_world_size(group)
        unbiased = var * (count / max(count - 1, 1))
        self.bn.running_mean.lerp_(mean.to(self.bn.running_mean.dtype),
                                   factor)
        self.bn.running_var.lerp_(unbiased.to(self.bn.running_var.dtype),
                                  factor)

    def forward_reference(self, x: Tensor) -> Tensor:
        """The same function through the straightforward reference
        implementation (:mod:`dn_mmdet.norm.reference`)."""
        self._check_input(x)
        use_batch_stats = self.bn.training or not self.track_running_stats
        factor = (self._update_factor()
                  if self.bn.training and self.track_running_stats else 0.0)
        return self._activate(
            dynamic_norm_reference(x, self.sc, self.base_scale,
                                   self.base_shift, self.bn.running_mean,
                                   self.bn.running_var, use_batch_stats,
                                   factor, self.eps, self.mode))

    # ------------------------------------------------------------------ #
    # Converters
    # ------------------------------------------------------------------ #
    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm,
                       **dn_kwargs) -> 'DynamicNorm2d':
        """A DN layer that computes what ``bn`` computes, now.

        The running statistics are copied, gamma and beta become the
        constant ``base_scale`` and ``base_shift`` that the SC-Module's
        output (zero at conversion) is added to: no static affine
        parameter is added. Outputs equal ``bn``'s in train and eval mode.

        Args:
            bn (_BatchNorm): A 2-D batch norm (BatchNorm2d, SyncBatchNorm).
            **dn_kwargs: DN options (``r``, ``g``, ``mode``, ...).
        """
        dn = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum,
                 track_running_stats=bn.track_running_stats, **dn_kwargs)
        with torch.no_grad():
            if bn.affine:
                dn.base_scale.copy_(bn.weight)
                dn.base_shift.copy_(bn.bias)
            if bn.track_running_stats:
                dn.bn.running_mean.copy_(bn.running_mean)
                dn.bn.running_var.copy_(bn.running_var)
                dn.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        ref = bn.weight if bn.affine else bn.running_mean
        if ref is not None:
            dn.to(ref.device)
        dn.train(bn.training)
        return dn

    @classmethod
    def convert_batchnorm(cls, module: nn.Module,
                          **dn_kwargs) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm in ``module`` by an
        equivalent DN layer (see :meth:`from_batchnorm`).

        The replaced modules keep their attribute names, so a ConvModule's
        ``norm_name`` still finds them. Returns the converted module (a new
        DN if ``module`` itself is a batch norm).
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return cls.from_batchnorm(module, **dn_kwargs)
        for name, child in module.named_children():
            converted = cls.convert_batchnorm(child, **dn_kwargs)
            if converted is not child:
                setattr(module, name, converted)
        return module

    @classmethod
    def convert_batchnorm_state_dict(cls, state_dict: dict, prefix: str = '',
                                     **dn_kwargs) -> dict:
        """Turn a BN model's state dict into that of the same model built
        with ``norm_cfg=dict(type='DN', **dn_kwargs)``.

        Every batch norm under ``prefix`` (found by its ``running_var`` key)
        is renamed as mmcv names DN layers (a last name component
        ``bn``/``bnX`` becomes ``dn``/``dnX``): its statistics go to
        ``<dn>.bn.*``, gamma and beta to ``<dn>.base_scale`` /
        ``<dn>.base_shift``, and a fresh SC-Module's keys are added (FC2 at
        zero), so the DN model loads it strictly and computes what the BN
        model did (as :meth:`from_batchnorm`). Other keys pass unchanged.

        Args:
            state_dict (dict): A BN model's state dict.
            prefix (str): Only convert norms whose names start with it (the
                paper converts the backbone alone: ``'backbone.'``).
            **dn_kwargs: DN options (``r``, ``g``, ...) of the target model.
        """
        removed, added = set(), {}
        for key, value in state_dict.items():
            if not (key.endswith('.running_var') and key.startswith(prefix)):
                continue
            bn_prefix = key[:-len('.running_var')]
            parent, _, last = bn_prefix.rpartition('.')
            if not last.startswith('bn'):
                raise ValueError(
                    f'cannot infer the DN name of the norm layer '
                    f'"{bn_prefix}": its name does not start with "bn"')
            dn_prefix = (parent + '.' if parent else '') + 'dn' + last[2:]
            bn_keys = {
                name: f'{bn_prefix}.{name}'
                for name in ('weight', 'bias', 'running_mean', 'running_var',
                             'num_batches_tracked')
                if f'{bn_prefix}.{name}' in state_dict
            }
            bn = nn.BatchNorm2d(value.numel(), affine='weight' in bn_keys)
            bn.load_state_dict(
                {name: state_dict[k] for name, k in bn_keys.items()},
                strict=False)
            dn = cls.from_batchnorm(bn, **dn_kwargs)
            added.update((f'{dn_prefix}.{name}', tensor)
                         for name, tensor in dn.state_dict().items())
            removed.update(bn_keys.values())
        result = {k: v for k, v in state_dict.items() if k not in removed}
        result.update(added)
        return result

    @classmethod
    def name_layers(cls, model: nn.Module) -> None:
        """Give every DN layer in ``model`` its qualified name, used in
        error messages."""
        for name, m in model.named_modules():
            if isinstance(m, cls):
                m.layer_name = name


def _all_reduce_moments(mean_nc: Tensor, var_nc: Tensor, group):
    """Batch mean and biased variance over all processes (differentiable).

    Every sample has the same H*W count on every process, so the raw first
    and second moments of the samples can be summed with one all-reduce;
    float64 keeps ``E[x^2] - E[x]^2`` accurate.
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
    return mean.to(mean_nc.dtype), var.to(var_nc.dtype)


def _check_args(num_features, eps, momentum, r, g, mode, impl) -> None:
    where = f'DN(num_features={num_features!r})'
    if (not isinstance(num_features, int) or isinstance(num_features, bool)
            or num_features < 1):
        raise ValueError(f'{where}: num_features must be a positive int, '
                         f'got {num_features!r}')
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
    if impl not in IMPLS:
        raise ValueError(f'{where}: unknown impl {impl!r}; expected one of '
                         f'{IMPLS}')
    if not eps > 0:
        raise ValueError(f'{where}: eps must be > 0, got {eps!r}')
    if momentum is not None and not 0 <= momentum <= 1:
        raise ValueError(f'{where}: momentum must be in [0, 1] or None, '
                         f'got {momentum!r}')
