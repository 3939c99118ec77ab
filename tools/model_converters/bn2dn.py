"""Convert a checkpoint of a BN model into one for the same model with DN.

    python tools/model_converters/bn2dn.py BN_CKPT OUT_CKPT \
        [--prefix backbone.] [--r 16] [--g oup]

Every batch norm (under ``--prefix``) becomes a DN layer that computes what
the BN did: statistics are kept, gamma/beta become DN's constant
``base_scale``/``base_shift``, and a fresh SC-Module is added (FC2 at zero).
Load the result with ``load_from`` or ``init_cfg=dict(type='Pretrained',
...)`` in a config whose ``norm_cfg`` is ``dict(type='DN', r=R, g=G)`` with
the same ``r`` and ``g``.
"""
import argparse
import os.path as osp

import torch

import dn_mmdet  # noqa: F401  (weights_only-safe loading of mmengine files)
from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.utils.compat import load_from_local


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint of the BN model')
    parser.add_argument('dst', help='where to write the DN checkpoint')
    parser.add_argument('--prefix', default='',
                        help="convert only norms under this prefix, e.g. "
                        "'backbone.' (the paper's detector)")
    parser.add_argument('--r', type=int, default=16,
                        help='DN reduction r of the target model')
    parser.add_argument('--g', default='oup',
                        help="DN g of the target model: an int or 'oup'")
    args = parser.parse_args()
    if args.g != 'oup':
        args.g = int(args.g)
    return args


def main():
    args = parse_args()
    if not osp.isfile(args.src):
        raise SystemExit(f'bn2dn: checkpoint not found: {args.src}')
    checkpoint = load_from_local(args.src, map_location='cpu')
    state_dict = checkpoint.get('state_dict', checkpoint)
    converted = DynamicNorm2d.convert_batchnorm_state_dict(
        state_dict, prefix=args.prefix, r=args.r, g=args.g)
    changed = sum(k not in state_dict for k in converted)
    if 'state_dict' in checkpoint:
        checkpoint = dict(checkpoint, state_dict=converted)
        checkpoint.pop('optimizer', None)  # BN-model state, meaningless now
    else:
        checkpoint = converted
    torch.save(checkpoint, args.dst)
    print(f'bn2dn: {changed} DN keys written to {args.dst}')


if __name__ == '__main__':
    main()
