"""What every normalisation layer of dn_mmdet shares.

DN, SN and MABN are 2-D norms that (in training) estimate statistics from the
batch. They share three things, kept here once:

* a name: ``layer_name`` is the layer's qualified name in its model (set by
  :func:`name_norm_layers`), so that an error says *which* of a detector's
  hundred norm layers got a bad input;
* their input checks (:meth:`NormLayer.check_input`): a 4-D input with the
  layer's channel count, and, while the layer normalises with batch
  statistics, enough values per channel to estimate them;
* :attr:`NormLayer.uses_batch_statistics`, which the runner hooks ask instead
  of re-deriving each layer's rules.

:func:`replace_modules` is the one model surgery their converters share
(BN -> DN, MABN -> BN, CenConv -> Conv2d).
"""

from typing import Callable, Optional

import torch.nn as nn
from torch import Tensor

__all__ = ['NormLayer', 'name_norm_layers', 'replace_modules']


class NormLayer(nn.Module):
    """Base class of dn_mmdet's normalisation layers over (N, C, H, W).

    Subclasses set ``_abbr_`` (mmcv's ``build_norm_layer`` names the layer
    with it, which fixes its checkpoint keys), implement
    :attr:`uses_batch_statistics`, and call :meth:`check_input` first in
    ``forward``.

    Args:
        num_features (int): Channels C.
    """

    _abbr_ = 'norm'
    #: Values per channel (N * H * W, over all synchronised processes) that
    #: batch statistics need: a variance needs two.
    min_values_per_channel = 2

    def __init__(self, num_features: int) -> None:
        super().__init__()
        if (
            not isinstance(num_features, int)
            or isinstance(num_features, bool)
            or num_features < 1
        ):
            raise ValueError(
                f'{type(self).__name__}: num_features must be a positive '
                f'int, got {num_features!r}'
            )
        self.num_features = num_features
        #: Qualified name in the model, for messages (see name_norm_layers).
        self.layer_name: Optional[str] = None

    @property
    def uses_batch_statistics(self) -> bool:
        """Whether ``forward`` now normalises with statistics of its input
        batch (so the input must hold enough values per channel)."""
        raise NotImplementedError

    def synced_processes(self) -> int:
        """How many processes pool their batch statistics with this one's
        (1 unless statistics are synchronised, e.g. under ``sync_bn``)."""
        return 1

    def option_error(self, name: str, expected: str, value) -> ValueError:
        """A ``ValueError`` for a bad constructor option (a ``norm_cfg``
        key), naming the layer type, the option and the value."""
        return ValueError(
            f'{self._abbr_.upper()}(num_features={self.num_features}): '
            f'option `{name}` must be {expected}, got {value!r}'
        )

    def check_eps_momentum(
        self, eps: float, momentum: Optional[float]
    ) -> None:
        """Check the options every BN-like ``norm_cfg`` carries: ``eps > 0``
        and ``momentum`` in [0, 1] (torch's convention) or None."""
        if (
            isinstance(eps, bool)
            or not isinstance(eps, (int, float))
            or not eps > 0
        ):
            raise self.option_error('eps', 'a number > 0', eps)
        if momentum is not None and (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 <= momentum <= 1
        ):
            raise self.option_error(
                'momentum',
                "in [0, 1] (torch's convention: the weight of "
                'the new value) or None',
                momentum,
            )

    def describe(self) -> str:
        """e.g. ``DN layer "backbone.stem.dn" (DynamicNorm2d, 32 channels)``
        for error messages."""
        where = f' "{self.layer_name}"' if self.layer_name else ''
        return (
            f'{self._abbr_.upper()} layer{where} ({type(self).__name__}, '
            f'{self.num_features} channels)'
        )

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` naming this layer if ``x`` cannot be
        normalised: not (N, C, H, W) with C = ``num_features``, or, with
        batch statistics, fewer than :attr:`min_values_per_channel` values
        per channel (counted over all synchronised processes). An input
        without values (N = 0) passes: it yields an empty output and leaves
        the running statistics alone."""
        if x.dim() != 4:
            raise ValueError(
                f'{self.describe()}: expected a 4-D input '
                f'(N, C, H, W), got shape {tuple(x.shape)}'
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f'{self.describe()}: expected {self.num_features} input '
                f'channels, got {x.shape[1]} (input shape {tuple(x.shape)})'
            )
        # Cheapest tests first: this runs in every forward.
        values = x.shape[0] * x.shape[2] * x.shape[3]
        if (
            values == 0
            or values >= self.min_values_per_channel
            or not self.uses_batch_statistics
        ):
            return
        if values * self.synced_processes() < self.min_values_per_channel:
            raise ValueError(
                f'{self.describe()}: got an input of shape {tuple(x.shape)} '
                f'in training, {values} value(s) per channel, but batch '
                f'statistics need at least {self.min_values_per_channel}. '
                'Raise `train_dataloader.batch_size` to 2 or more, or set '
                '`train_dataloader.drop_last=True` if this is the last, '
                'incomplete batch of an epoch; or freeze the statistics '
                '(`norm_eval=True` in the backbone).'
            )


class BatchNormChildLayer(NormLayer):
    """A :class:`NormLayer` whose statistics live on a child ``bn``
    (``nn.BatchNorm2d``), so that mmengine and mmcv treat them as BN's
    (``norm_eval``, ``sync_bn``, ``norm_decay_mult``). BN's hyper-parameters
    are read from that child."""

    def _stats(self) -> nn.Module:
        """The child ``bn``, read from ``_modules``: ``self.bn`` goes
        through ``nn.Module.__getattr__`` (1-2 us on a slow vCPU), and a
        forward asks several times."""
        return self._modules['bn']

    @property
    def eps(self) -> float:
        return self._stats().eps

    @property
    def momentum(self) -> Optional[float]:
        return self._stats().momentum


class BatchNormAffineChildLayer(BatchNormChildLayer):
    """A :class:`BatchNormChildLayer` whose affine (gamma, beta) is the
    child's too: ``weight`` and ``bias`` refer to it, as mmcv's
    ``constant_init`` expects of a norm layer."""

    @property
    def weight(self) -> nn.Parameter:
        return self.bn.weight

    @property
    def bias(self) -> nn.Parameter:
        return self.bn.bias


def name_norm_layers(model: nn.Module) -> int:
    """Set ``layer_name`` of every :class:`NormLayer` in ``model`` to its
    qualified name (used in messages). Returns how many were named."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, NormLayer):
            module.layer_name = name
            count += 1
    return count


def replace_modules(
    module: nn.Module, replace: Callable[[nn.Module], Optional[nn.Module]]
) -> nn.Module:
    """Replace, in place, every submodule of ``module`` that ``replace``
    maps to a module.

    ``replace`` is asked first of ``module``, then of each child in turn:
    a module it returns takes the asked module's place (under the same
    attribute name, so e.g. a ConvModule's ``norm_name`` still finds it) and
    is not searched further; None means "search its children".

    Args:
        module (nn.Module): The model (or layer) to convert.
        replace (Callable): ``module -> module or None``.

    Returns:
        nn.Module: ``module``, or what replaces it if ``replace`` maps
        ``module`` itself.
    """
    replaced = replace(module)
    if replaced is not None:
        return replaced
    for name, child in module.named_children():
        converted = replace_modules(child, replace)
        if converted is not child:
            setattr(module, name, converted)
    return module
