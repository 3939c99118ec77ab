"""Write the embedded shape-classification data set (stage 1 on the CPU).

    python tools/misc/make_shapes_cls_dataset.py    # -> data/shapes_cls
    python tools/misc/make_shapes_cls_dataset.py --num-train 500 --size 48

Object-centred crops of the shapes generator's images, one per shape,
labelled with its class, in mmpretrain ``CustomDataset`` files
(``<out>/{train,val}/*.jpg``, ``<out>/meta/{train,val,classes}.txt``); see
:mod:`dn_mmdet.datasets.shapes_cls_generator`. The same seed gives the same
files whatever ``--workers``. Idempotent: a folder that already holds the
data set of the same parameters is left alone (``--force`` regenerates);
annotation files in ``<out>/meta`` that this tool did not write are never
overwritten without ``--force``.
"""

import argparse
import os
import sys
import time

from dn_mmdet.datasets import SHAPES_CLASSES
from dn_mmdet.datasets.shapes_cls_generator import ensure_shapes_cls_dataset
from dn_mmdet.utils.cli_args import int_at_least, nonnegative_int, positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the embedded shape-classification data set '
        f'({", ".join(SHAPES_CLASSES)}) in mmpretrain CustomDataset format.'
    )
    parser.add_argument(
        '--out', default='data/shapes_cls', help='output folder (data root)'
    )
    parser.add_argument(
        '--num-train', type=positive_int, default=6000, help='training images'
    )
    parser.add_argument(
        '--num-val', type=positive_int, default=1000, help='validation images'
    )
    parser.add_argument(
        '--seed', type=nonnegative_int, default=0, help='random seed'
    )
    parser.add_argument(
        '--size',
        type=int_at_least(16),
        default=64,
        help='side of the crops in pixels (>= 16)',
    )
    parser.add_argument(
        '--workers',
        type=nonnegative_int,
        default=min(2, os.cpu_count() or 1),
        help='processes drawing images (the output does not depend on it)',
    )
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if an identical data set is already there, '
        'and overwrite annotation files this tool did not write',
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        made = ensure_shapes_cls_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            size=args.size,
            force=args.force,
            workers=args.workers,
            progress=True,
        )
    except FileExistsError as e:  # a user's annotation files are in the way
        sys.exit(f'shapes_cls: error: {e}')
    if made:
        print(
            f'shapes_cls: wrote {args.num_train} train and {args.num_val} '
            f'val images ({args.size}x{args.size}) to {args.out} in '
            f'{time.perf_counter() - start:.1f} s'
        )
    else:
        print(
            f'shapes_cls: {args.out} is up to date (same parameters); '
            'use --force to regenerate'
        )


if __name__ == '__main__':
    sys.exit(main())
