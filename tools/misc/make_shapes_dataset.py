"""Write the embedded synthetic shapes detection data set (COCO format).

    python tools/misc/make_shapes_dataset.py                 # -> data/shapes
    python tools/misc/make_shapes_dataset.py --out data/coco --coco-layout

Idempotent: when ``--out`` already holds a data set made with the same
parameters (recorded in ``shapes_stamp.json``), nothing is done; ``--force``
regenerates it anyway. The same seed always gives the same data set.
"""

import argparse
import os
import sys
import time

from dn_mmdet.datasets import SHAPES_CLASSES
from dn_mmdet.datasets.shapes_generator import ensure_shapes_dataset
from dn_mmdet.utils.cli_args import nonnegative_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the synthetic shapes detection data set '
        f'({", ".join(SHAPES_CLASSES)}) in COCO format.'
    )
    parser.add_argument(
        '--out', default='data/shapes', help='output folder (data root)'
    )
    parser.add_argument(
        '--num-train',
        type=nonnegative_int,
        default=2000,
        help='training images',
    )
    parser.add_argument(
        '--num-val',
        type=nonnegative_int,
        default=300,
        help='validation images',
    )
    parser.add_argument(
        '--seed', type=nonnegative_int, default=0, help='random seed'
    )
    parser.add_argument(
        '--img-size',
        type=int,
        nargs=2,
        default=(200, 320),
        metavar=('MIN', 'MAX'),
        help='range of image widths and heights in pixels',
    )
    parser.add_argument(
        '--coco-layout',
        action='store_true',
        help='use the file names of data/coco (instances_train2017.json, '
        'train2017/, ...) so that COCO configs run unchanged',
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
        help='regenerate even if an identical data set is already there',
    )
    args = parser.parse_args(argv)
    low, high = args.img_size
    if not 32 <= low <= high:
        parser.error(
            f'--img-size must be MIN MAX with 32 <= MIN <= MAX, got '
            f'{low} {high}'
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        made = ensure_shapes_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            img_size=tuple(args.img_size),
            coco_layout=args.coco_layout,
            force=args.force,
            workers=args.workers,
            progress=True,
        )
    except FileExistsError as e:  # a foreign annotation file is in the way
        sys.exit(f'shapes: error: {e}')
    if made:
        print(
            f'shapes: wrote {args.num_train} train and {args.num_val} val '
            f'images to {args.out} in {time.perf_counter() - start:.1f} s'
        )
    else:
        print(
            f'shapes: {args.out} is up to date (same parameters); '
            'use --force to regenerate'
        )


if __name__ == '__main__':
    main()
