"""Count a model's parameters and multiply-adds (MAdds).

    python tools/analysis/get_flops.py CONFIG [--shape 320 320]

CONFIG is a detector (mmdet) or a classifier (mmpretrain, e.g. the
ImageNet-100 rows under ``configs/mobilenet_v2`` and ``configs/resnet``); the
input shape defaults to 320x320 for detectors and 224x224 for classifiers,
the sizes the DN paper reports MAdds at. What is counted, and how:
:mod:`dn_mmdet.analysis.complexity`.
"""

import argparse
import os.path as osp

from mmengine.config import Config, DictAction

import dn_mmdet  # noqa: F401  (registers DN, MobileNetV2DN, ...)
from dn_mmdet.analysis.complexity import default_shape, model_complexity
from dn_mmdet.utils.cli_args import positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Count params and MAdds of a detector or classifier config'
    )
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs='+',
        help='input height and width (one value: square); default 320 for '
        'detectors, 224 for classifiers',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value',
    )
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config {args.config}: no such file')
    if args.shape is not None and len(args.shape) > 2:
        parser.error(
            f'--shape takes 1 or 2 values (height [width]), got '
            f'{len(args.shape)}'
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.shape is None:
        shape = None
    elif len(args.shape) == 1:
        shape = (args.shape[0], args.shape[0])
    else:
        shape = tuple(args.shape)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = shape or default_shape(cfg)
    params, madds = model_complexity(cfg, shape)
    split = '=' * 40
    print(
        f'{split}\nConfig: {args.config}\n'
        f'Input shape: (3, {shape[0]}, {shape[1]})\n'
        f'Params: {params / 1e6:.2f}M ({params:,})\n'
        f'MAdds: {madds / 1e9:.2f}G = {madds / 1e6:.2f}M ({madds:,})\n'
        f'{split}'
    )


if __name__ == '__main__':
    main()
