"""Record and plot DN's generated scale and shift per class (DN Figure 5).

    python tools/analysis/plot_dn_affine.py CONFIG CHECKPOINT \
        --out dn_affine.png [--layers first last] [--classes circle star] \
        [--split val] [--max-images 50] [--max-channels 320] \
        [--dump dn_affine.json]

For the first and last DN-B layers (or ``--layers``), the mean generated
scale and shift per channel over the images of each class (a detector's
image goes to the class covering the most box area), plotted one line per
class; the printed summary and ``--dump`` compare the spread across classes
with the spread within a class. See :mod:`dn_mmdet.analysis.dn_affine`.
"""

import argparse
import json
import os.path as osp
import sys

from dn_mmdet.analysis.dn_affine import (
    build_model_and_dataset,
    images_by_class,
    plot_affines,
    record_affines,
    select_layers,
    summarise,
    summary_line,
)
from dn_mmdet.utils.cli_args import positive_int
from dn_mmdet.utils.launch import CfgOptionsAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Plot DN-B's generated scale and shift per class and "
        'channel (DN paper Figure 5)'
    )
    parser.add_argument('config', help='model and dataset config')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--out', required=True, help='output image (.png)')
    parser.add_argument(
        '--layers',
        nargs='+',
        default=['first', 'last'],
        help="DN-B layer names, or 'first'/'last' (default: first last)",
    )
    parser.add_argument(
        '--classes',
        nargs='+',
        help='class names (default: the first 4 classes with images)',
    )
    parser.add_argument(
        '--split',
        default='val',
        choices=['train', 'val', 'test'],
        help='dataloader whose dataset and test-time pipeline are used',
    )
    parser.add_argument(
        '--max-images', type=positive_int, default=50, help='images per class'
    )
    parser.add_argument('--batch-size', type=positive_int, default=8)
    parser.add_argument(
        '--max-channels',
        type=positive_int,
        default=320,
        help='plot every k-th channel of wider layers',
    )
    parser.add_argument('--dump', help='write the statistics as json')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config settings, KEY=VALUE pairs',
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        model, dataset = build_model_and_dataset(
            args.config, args.checkpoint, args.split, args.cfg_options
        )
        layers = select_layers(model, args.layers)
        classes = images_by_class(dataset, args.classes, args.max_images)
        per_class = {
            cls: record_affines(
                model, dataset, layers, indices, args.batch_size
            )
            for cls, indices in classes.items()
        }
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'plot_dn_affine: error: {err}')
    summary = summarise(per_class)
    for layer, entry in summary.items():
        print(summary_line(layer, entry))
    plot_affines(
        summary,
        args.out,
        args.max_channels,
        title=f'DN-B scale and shift per class: '
        f'{osp.basename(args.checkpoint)}, {args.split} split',
    )
    print(f'saved {args.out}')
    if args.dump:
        with open(args.dump, 'w') as f:
            json.dump(
                dict(
                    config=args.config,
                    checkpoint=args.checkpoint,
                    split=args.split,
                    images={c: len(i) for c, i in classes.items()},
                    layers=summary,
                ),
                f,
                indent=1,
            )
        print(f'saved {args.dump}')


if __name__ == '__main__':
    main()
