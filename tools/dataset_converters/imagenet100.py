"""Build the DN paper's ImageNet-100 split from an ImageNet-1k tree.

    python tools/dataset_converters/imagenet100.py data/imagenet \
        --out data/imagenet100 [--seed 0]               # 100 random classes
    python tools/dataset_converters/imagenet100.py data/imagenet \
        --classes tools/dataset_converters/imagenet100_cmc.txt  # CMC's list
    python tools/dataset_converters/imagenet100.py data/imagenet \
        --val-labels LOC_val_solution.csv                     # flat val/

Writes ``<out>/{classes,train,val,test}.txt`` (mmpretrain ``CustomDataset``
annotation files, no image copies) and the link ``<out>/images`` to the
ImageNet root; see :mod:`dn_mmdet.datasets.imagenet100` for the split and
what a tree must hold. ``imagenet100_cmc.txt`` beside this script is CMC's
widely used class list. Annotation files in ``--out`` that this tool did
not write are not overwritten without ``--force``.
"""

import argparse
import os.path as osp
import sys

from dn_mmdet.datasets.imagenet100 import ImageNetTreeError, build_imagenet100
from dn_mmdet.utils.cli_args import nonnegative_int, positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write ImageNet-100 annotation files (no image copies) '
        'from an ImageNet-1k tree.'
    )
    parser.add_argument('root', help='ImageNet-1k root (train/, val/)')
    parser.add_argument(
        '--out', default='data/imagenet100', help='output folder'
    )
    parser.add_argument(
        '--classes',
        help='class list, one wnid a line (e.g. tools/dataset_converters/'
        'imagenet100_cmc.txt); without it, --num-classes are drawn',
    )
    parser.add_argument(
        '--num-classes', type=positive_int, default=100, help='classes to draw'
    )
    parser.add_argument(
        '--seed',
        type=nonnegative_int,
        default=0,
        help='seed of the draw and the split',
    )
    parser.add_argument(
        '--val-fraction',
        type=float,
        default=0.2,
        help='share of the training images held out for validation',
    )
    parser.add_argument(
        '--val-labels',
        help='labels of a flat val/: LOC_val_solution.csv or '
        'ILSVRC2012_validation_ground_truth.txt',
    )
    parser.add_argument(
        '--devkit-meta',
        help="the devkit's meta.mat (default: beside --val-labels)",
    )
    parser.add_argument(
        '--force',
        action='store_true',
        help='overwrite annotation files in --out that this tool did not '
        'write',
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        counts = build_imagenet100(
            args.root,
            args.out,
            classes_file=args.classes,
            num_classes=args.num_classes,
            seed=args.seed,
            val_fraction=args.val_fraction,
            val_labels=args.val_labels,
            devkit_meta=args.devkit_meta,
            force=args.force,
        )
    except (ImageNetTreeError, OSError) as err:
        sys.exit(f'imagenet100: error: {err}')
    source = (
        args.classes or f'{len(counts["classes"])} drawn with seed {args.seed}'
    )
    print(f'imagenet100: {len(counts["classes"])} classes ({source})')
    for split in ('train', 'val', 'test'):
        per_class = list(counts[split].values())
        print(
            f'  {split:<5} {sum(per_class):>7} images '
            f'({min(per_class)}-{max(per_class)} a class)'
        )
    print(
        f'  written to {args.out}/ (classes.txt, train.txt, val.txt, '
        f'test.txt; images -> {osp.abspath(args.root)})'
    )


if __name__ == '__main__':
    main()
