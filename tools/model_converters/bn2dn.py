"""Convert a checkpoint of a BN model into one for the same model with DN.

    python tools/model_converters/bn2dn.py BN_CKPT OUT_CKPT \
        [--prefix backbone.] [--r 16] [--g oup]

Every batch norm (under ``--prefix``) becomes a DN layer that computes what
the BN did: statistics are kept, gamma/beta become DN's constant
``base_scale``/``base_shift``, and a fresh SC-Module is added (FC2 at zero).
Layers get the names the model built with DN gives them (``bn1`` ->
``dn1``, ``conv.bn`` -> ``conv.dn``; ``downsample.1``, ``norm1`` stay), so
checkpoints of mmdet's and mmpretrain's ResNet, ResNeXt, RegNet,
MobileNetV2 and HRNet convert.
Load the result with ``load_from`` or ``init_cfg=dict(type='Pretrained',
...)`` in a config whose ``norm_cfg`` is ``dict(type='DN', r=R, g=G)`` with
the same ``r`` and ``g``.

Refused, with exit status 1: a checkpoint that already holds DN layers under
``--prefix`` (converted before, or a DN model's), and a ``--prefix`` under
which there is no batch norm. The result is written atomically.
"""

import argparse
import io
import os.path as osp

import torch

import dn_mmdet  # noqa: F401
from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.converters import find_norm_layers
from dn_mmdet.utils.atomic_backend import atomic_write
from dn_mmdet.utils.compat import load_from_local
from dn_mmdet.utils.launch import CHECKPOINT_ERRORS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint of the BN model')
    parser.add_argument('dst', help='where to write the DN checkpoint')
    parser.add_argument(
        '--prefix',
        default='',
        help='convert only norms under this prefix, e.g. '
        "'backbone.' (the paper's detector)",
    )
    parser.add_argument(
        '--r', type=int, default=16, help='DN reduction r of the target model'
    )
    parser.add_argument(
        '--g', default='oup', help="DN g of the target model: an int or 'oup'"
    )
    args = parser.parse_args()
    if args.g != 'oup':
        try:
            args.g = int(args.g)
        except ValueError:
            parser.error(f"--g must be an int or 'oup', got {args.g!r}")
    return args


def _top_prefixes(names):
    """``['backbone.', 'neck.']`` for layers named ``backbone.*``,
    ``neck.*``."""
    return sorted({name.split('.', 1)[0] + '.' for name in names})


def _examples(names, count=3):
    shown = ', '.join(names[:count])
    return shown + (
        f' and {len(names) - count} more' if len(names) > count else ''
    )


def main():
    args = parse_args()
    if not osp.isfile(args.src):
        raise SystemExit(f'bn2dn: checkpoint not found: {args.src}')
    try:
        checkpoint = load_from_local(args.src, map_location='cpu')
    except CHECKPOINT_ERRORS as err:
        raise SystemExit(f'bn2dn: {err}') from None
    if not isinstance(checkpoint, dict):
        raise SystemExit(
            f'bn2dn: {args.src} holds a {type(checkpoint)}, '
            'not a state dict or a checkpoint dict'
        )
    state_dict = checkpoint.get('state_dict', checkpoint)
    bn_layers, dn_layers = find_norm_layers(state_dict)

    def under_prefix(names):
        return [name for name in names if (name + '.').startswith(args.prefix)]

    dn_here = under_prefix(dn_layers)
    if dn_here:
        keys = [f'{name}.base_scale' for name in dn_here]
        raise SystemExit(
            f'bn2dn: {args.src} already holds {len(dn_here)} DN layer(s) '
            f"under the prefix '{args.prefix}' (keys {_examples(keys)}): it "
            'was converted before, or is the checkpoint of a DN model. '
            'Convert only BN layers with a --prefix that leaves them out'
            + (
                f' (BN layers are under {", ".join(_top_prefixes(bn_layers))})'
                if bn_layers
                else ''
            )
        )
    bn_here = under_prefix(bn_layers)
    if not bn_here:
        where = (
            f'BN layers are under {", ".join(_top_prefixes(bn_layers))}'
            if bn_layers
            else 'it holds no BN layer at all (no *.running_var key)'
        )
        raise SystemExit(
            f'bn2dn: no BN layer under the prefix '
            f"'{args.prefix}' in {args.src}; {where}"
        )

    converted = DynamicNorm2d.convert_batchnorm_state_dict(
        state_dict, prefix=args.prefix, r=args.r, g=args.g
    )
    if 'state_dict' in checkpoint:
        checkpoint = dict(checkpoint, state_dict=converted)
        checkpoint.pop('optimizer', None)  # BN-model state, meaningless now
    else:
        checkpoint = converted
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(args.dst, buffer.getvalue())
    print(
        f'bn2dn: {len(bn_here)} BN layers under '
        f"'{args.prefix}' converted to DN (r={args.r}, g={args.g}); "
        f'written to {args.dst}'
    )


if __name__ == '__main__':
    main()
