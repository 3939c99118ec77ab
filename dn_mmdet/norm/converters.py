"""Model surgery for DN: BN -> DN, for modules and for state dicts.

Each function is also a classmethod of :class:`DynamicNorm2d`
(``DynamicNorm2d.convert_batchnorm(model)``), as detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm``. Existing norm layers are
left alone: a DN layer keeps its statistics child ``bn`` (a BatchNorm2d),
so converting a model (or a checkpoint) that already holds DN layers, such as
the paper's detector with its DN backbone and BN neck and head, converts
only the plain BNs.
"""

from typing import List, Tuple

import torch
import torch.nn as nn

from .base import NormLayer, replace_modules
from .dynamic_norm import DynamicNorm2d

__all__ = [
    'from_batchnorm',
    'convert_batchnorm',
    'convert_batchnorm_state_dict',
    'find_norm_layers',
]


def from_batchnorm(
    bn: nn.modules.batchnorm._BatchNorm,
    layer_type: type = DynamicNorm2d,
    **dn_kwargs,
) -> DynamicNorm2d:
    """A DN layer that computes what ``bn`` computes, now.

    The running statistics are copied, gamma and beta become the constant
    ``base_scale`` and ``base_shift`` that the SC-Module's output (zero at
    conversion) is added to: no static affine parameter is added. Outputs
    equal ``bn``'s in train and eval mode.

    Args:
        bn (_BatchNorm): A 2-D batch norm (BatchNorm2d, SyncBatchNorm).
        layer_type (type): DynamicNorm2d or a subclass.
        **dn_kwargs: DN options (``r``, ``g``, ``mode``, ...).
    """
    dn = layer_type(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        track_running_stats=bn.track_running_stats,
        **dn_kwargs,
    )
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


def convert_batchnorm(
    module: nn.Module, layer_type: type = DynamicNorm2d, **dn_kwargs
) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm in ``module`` by an
    equivalent DN layer (see :func:`from_batchnorm`).

    Norm layers of this project (:class:`NormLayer`: DN, SN, MABN) are left
    as they are, with the batch norms inside them. The replaced modules keep
    their attribute names, so a ConvModule's ``norm_name`` still finds them.
    Returns the converted module (a new DN if ``module`` itself is a batch
    norm).
    """

    def replace(m: nn.Module):
        if isinstance(m, NormLayer):
            return m  # kept whole, with the batch norms inside
        if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return from_batchnorm(m, layer_type, **dn_kwargs)
        return None

    return replace_modules(module, replace)


def _child(parent: str, name: str) -> str:
    return f'{parent}.{name}' if parent else name


def _layers_with(state_dict: dict, leaf: str) -> List[str]:
    """Names of the modules with a ``leaf`` entry (``''`` for the root)."""
    names = []
    for key in state_dict:
        if key == leaf:
            names.append('')
        elif key.endswith('.' + leaf):
            names.append(key[: -len(leaf) - 1])
    return names


def find_norm_layers(state_dict: dict) -> Tuple[List[str], List[str]]:
    """Names of the batch norms and of the DN layers of a state dict.

    A batch norm is found by its ``running_var`` (so only BNs that track
    running statistics), a DN layer by its ``base_scale`` and SC-Module; the
    statistics child of a DN layer is part of it, not a batch norm.

    Returns:
        tuple[list[str], list[str]]: BN names, DN names.
    """
    dn_layers = [
        name
        for name in _layers_with(state_dict, 'base_scale')
        if _child(name, 'sc.fc1.weight') in state_dict
    ]
    inside_dn = {_child(name, 'bn') for name in dn_layers}
    bn_layers = [
        name
        for name in _layers_with(state_dict, 'running_var')
        if name not in inside_dn
    ]
    return bn_layers, dn_layers


def _dn_name(bn_name: str) -> str:
    """The name the same model built with ``norm_cfg=dict(type='DN')``
    gives this norm layer.

    mmcv's ``build_norm_layer(cfg, C, postfix)`` names a layer with its
    type's abbreviation and the postfix (``bn1`` for BN, ``dn1`` for DN),
    and backbones register it under that name (``self.norm1_name``; a
    ConvModule's ``conv.bn``); every other name is the model's own (an
    index in a ``Sequential``, e.g. ResNet's ``downsample.1`` and HRNet's
    fuse layers, or a fixed attribute) and does not change with the norm.
    So a last component ``bn<postfix>`` becomes ``dn<postfix>``, and any
    other name stays.
    """
    parent, _, last = bn_name.rpartition('.')
    if not last.startswith('bn'):
        return bn_name
    return _child(parent, 'dn' + last[2:])


def convert_batchnorm_state_dict(
    state_dict: dict,
    prefix: str = '',
    layer_type: type = DynamicNorm2d,
    **dn_kwargs,
) -> dict:
    """Turn a BN model's state dict into that of the same model built with
    ``norm_cfg=dict(type='DN', **dn_kwargs)``.

    Every batch norm whose name starts with ``prefix`` (see
    :func:`find_norm_layers`; DN layers and their statistics are left as
    they are) is renamed as mmcv names DN layers (a last name component
    ``bn``/``bnX`` becomes ``dn``/``dnX``; other names, such as
    ``downsample.1`` or ``norm1``, stay; see :func:`_dn_name`): its
    statistics go to
    ``<dn>.bn.*``, gamma and beta to ``<dn>.base_scale`` /
    ``<dn>.base_shift``, and a fresh SC-Module's keys are added (FC2 at
    zero), so the DN model loads it strictly and computes what the BN model
    did (as :func:`from_batchnorm`). Other keys pass unchanged.

    Args:
        state_dict (dict): A BN model's state dict.
        prefix (str): Only convert norms whose names start with it (the
            paper converts the backbone alone: ``'backbone.'``).
        layer_type (type): DynamicNorm2d or a subclass.
        **dn_kwargs: DN options (``r``, ``g``, ...) of the target model.
    """
    removed, added = set(), {}
    bn_layers, _ = find_norm_layers(state_dict)
    for bn_name in bn_layers:
        if not (bn_name + '.').startswith(prefix):
            continue
        dn_name = _dn_name(bn_name)
        bn_keys = {
            name: _child(bn_name, name)
            for name in (
                'weight',
                'bias',
                'running_mean',
                'running_var',
                'num_batches_tracked',
            )
            if _child(bn_name, name) in state_dict
        }
        num_features = state_dict[bn_keys['running_var']].numel()
        bn = nn.BatchNorm2d(num_features, affine='weight' in bn_keys)
        bn.load_state_dict(
            {name: state_dict[key] for name, key in bn_keys.items()},
            strict=False,
        )
        dn = from_batchnorm(bn, layer_type, **dn_kwargs)
        added.update(
            (_child(dn_name, name), tensor)
            for name, tensor in dn.state_dict().items()
        )
        removed.update(bn_keys.values())
    result = {k: v for k, v in state_dict.items() if k not in removed}
    result.update(added)
    return result
