"""Rename a MobileNetV2 checkpoint's keys to those of ``MobileNetV2DN``.

    python tools/model_converters/mobilenetv2_to_dn_backbone.py SRC DST
    python tools/model_converters/bn2dn.py DST DST_DN --prefix backbone. \
        --r 16 --g oup                                   # then, for a DN model

mmpretrain's MobileNetV2 names its layers ``conv1``, ``layerX.Y.conv.{0,1,2}``,
``conv2``; mmdet's ``conv1``, ``layerX.Y.{expand_conv,depthwise_conv,
linear_conv}``, ``conv2``; torchvision's ``features.K...`` and dn_mmdet's
``MobileNetV2DN`` (the detector's and the stage-1 classifiers' backbone)
``stem``, ``stageX.Y.{expand_conv,depthwise_conv,linear_conv}``,
``conv_last``. Loaded into the detector as they are, they are refused (the
backbone loads strictly and lists the keys that do not match).

All four are the same network (MobileNetV2 1.0: 52 conv + BN pairs in the same
order), so this tool pairs the convs and BNs of SRC with those of
``MobileNetV2DN`` in network order, checks every shape, and writes them under
MobileNetV2DN's names with the prefix ``backbone.`` (what the detector's
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` and
a stage-1 classifier read). A final linear layer (the ImageNet classifier) is
left out. It prints what it renamed and dropped, and refuses a checkpoint that
is not a MobileNetV2 1.0 with BN (naming the first layer that differs).
"""

import argparse
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

import dn_mmdet  # noqa: F401
from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.utils.compat import load_from_local
from dn_mmdet.utils.launch import CHECKPOINT_ERRORS

#: Parameter and buffer names of a batch norm layer.
BN_KEYS = (
    'weight',
    'bias',
    'running_mean',
    'running_var',
    'num_batches_tracked',
)


def group_layers(
    state_dict: Dict[str, torch.Tensor],
) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Split a state dict into its conv / BN layers, in file order.

    Returns:
        tuple: ``[(kind, module_path)]`` with kind ``'conv'`` (a 4-D
        ``weight``) or ``'bn'`` (has ``running_mean``), and the keys of every
        other module (e.g. a classifier's linear layer).
    """
    modules: Dict[str, Dict[str, torch.Tensor]] = OrderedDict()
    for key, value in state_dict.items():
        path, _, name = key.rpartition('.')
        modules.setdefault(path, {})[name] = value
    layers, others = [], []
    for path, params in modules.items():
        if 'running_mean' in params:
            layers.append(('bn', path))
        elif set(params) == {'weight'} and params['weight'].dim() == 4:
            layers.append(('conv', path))
        else:
            others += [f'{path}.{name}' for name in params]
    return layers, others


def convert(
    state_dict: Dict[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a MobileNetV2 state dict to ``backbone.`` + MobileNetV2DN keys.

    Returns:
        tuple: The new state dict and the source keys left out.

    Raises:
        ValueError: The source is not a MobileNetV2 1.0 with BN: other layer
            counts, or a layer of another kind or shape (the first one is
            named).
    """
    target = MobileNetV2DN(
        out_taps=('conv_last',), norm_cfg=dict(type='BN')
    ).state_dict()
    target_layers, _ = group_layers(target)
    source_layers, dropped = group_layers(state_dict)
    if len(source_layers) != len(target_layers):
        raise ValueError(
            f'expected the {len(target_layers)} conv and BN layers of '
            f'MobileNetV2 1.0, found {len(source_layers)} (e.g. the first is '
            f'{source_layers[0][1] if source_layers else None!r})'
        )
    converted = OrderedDict()
    for (kind, src), (target_kind, dst) in zip(source_layers, target_layers):
        names = BN_KEYS if kind == 'bn' else ('weight',)
        if kind != target_kind:
            raise ValueError(
                f'{src} is a {kind} layer where MobileNetV2DN '
                f'has a {target_kind} layer ({dst})'
            )
        for name in names:
            src_key, dst_key = f'{src}.{name}', f'{dst}.{name}'
            if src_key not in state_dict:
                raise ValueError(
                    f'{src_key} is missing (a BN with affine '
                    'parameters and running statistics is '
                    'expected)'
                )
            value = state_dict[src_key]
            if value.shape != target[dst_key].shape:
                raise ValueError(
                    f'{src_key} has shape {tuple(value.shape)}, but '
                    f'MobileNetV2DN {dst_key} has '
                    f'{tuple(target[dst_key].shape)}: not MobileNetV2 1.0'
                )
            converted[f'backbone.{dst_key}'] = value
    return converted, dropped


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'src', help='MobileNetV2 checkpoint (mmpretrain, mmdet or torchvision)'
    )
    parser.add_argument('dst', help='where to write the renamed checkpoint')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        sys.exit(
            f'mobilenetv2_to_dn_backbone: checkpoint not found: {args.src}'
        )
    try:  # weights-only, with mmengine's globals allowed
        checkpoint = load_from_local(args.src, map_location='cpu')
    except CHECKPOINT_ERRORS as err:
        sys.exit(f'mobilenetv2_to_dn_backbone: {err}')
    if not isinstance(checkpoint, dict):
        sys.exit(
            f'mobilenetv2_to_dn_backbone: {args.src} holds a '
            f'{type(checkpoint).__name__}, not a state dict'
        )
    state_dict = checkpoint.get('state_dict', checkpoint)
    try:
        converted, dropped = convert(state_dict)
    except ValueError as err:
        sys.exit(f'mobilenetv2_to_dn_backbone: {args.src}: {err}')
    torch.save(dict(state_dict=converted), args.dst)
    print(
        f'mobilenetv2_to_dn_backbone: {len(converted)} tensors of '
        f'{args.src} renamed to MobileNetV2DN keys (backbone.stem... '
        f'backbone.conv_last) in {args.dst}'
    )
    if dropped:
        print(f'  left out (not MobileNetV2DN layers): {", ".join(dropped)}')


if __name__ == '__main__':
    main()
