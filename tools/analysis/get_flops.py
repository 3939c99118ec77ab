"""Count a model's parameters and multiply-adds (MAdds).

    python tools/analysis/get_flops.py CONFIG [--shape 320 320]

CONFIG is a detector (mmdet) or a classifier (mmpretrain, e.g. the
ImageNet-100 rows under ``configs/mobilenet_v2`` and ``configs/resnet``); the
input shape defaults to 320x320 for detectors and 224x224 for classifiers,
the sizes the DN paper reports MAdds at.

MAdds are counted the way the DN paper (and FNA, its code base) counts them:
forward hooks on every ``nn.Conv2d`` and ``nn.Linear`` of the network
(backbone, neck and head, no post-processing), one image, through the
model's ``forward(inputs, mode='tensor')``; a conv adds
``k_h * k_w * C_in / groups * C_out`` per output location, a linear layer
``in * out``. DN's SC-Module FCs (``GroupedFC``, deliberately not
``nn.Linear``) count as the grouped linear layers they are,
``in / groups * out`` a sample. Norm layers, activations and additions are
not counted, and biases are ignored (the paper's convs are bias-free). Hooks
are used rather than mmengine's ``get_model_complexity_info`` because that
one also counts norm layers and element-wise ops, which the paper's figures
leave out, and does not know DN's FCs.
"""

import argparse
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope

import dn_mmdet  # noqa: F401  (registers DN, MobileNetV2DN, ...)
from dn_mmdet.norm import GroupedFC
from dn_mmdet.utils.cli_args import positive_int

#: Input (height, width) by the config's default scope.
DEFAULT_SHAPES = {'mmdet': (320, 320), 'mmpretrain': (224, 224)}


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def count_madds(model: nn.Module, inputs: torch.Tensor, forward=None) -> int:
    """Multiply-adds of Conv2d, Linear and GroupedFC layers in one forward.

    Args:
        model (nn.Module): The network whose layers are counted.
        inputs (Tensor): Input batch of shape (N, ...). The count is
            per sample (divided by N).
        forward (callable, optional): ``forward(inputs)`` to run instead of
            ``model(inputs)`` (e.g. a detector's ``_forward``).

    Returns:
        int: Multiply-adds per sample.
    """
    total = [0]

    def conv_hook(m: nn.Conv2d, args, out: torch.Tensor) -> None:
        k_h, k_w = m.kernel_size
        per_location = k_h * k_w * (m.in_channels // m.groups) * m.out_channels
        total[0] += per_location * out.shape[0] * out.shape[2] * out.shape[3]

    def linear_hook(m: nn.Module, args, out: torch.Tensor) -> None:
        # nn.Linear or GroupedFC (groups=1 for nn.Linear).
        rows = out.numel() // m.out_features
        groups = getattr(m, 'groups', 1)
        total[0] += rows * (m.in_features // groups) * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, (nn.Linear, GroupedFC)):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            (forward or model)(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0] // inputs.shape[0]


def default_shape(cfg: Config) -> Tuple[int, int]:
    """The input (height, width) the paper reports a config's MAdds at."""
    return DEFAULT_SHAPES.get(
        cfg.get('default_scope', 'mmdet'), DEFAULT_SHAPES['mmdet']
    )


def model_complexity(
    cfg: Config, shape: Optional[Sequence[int]] = None
) -> Tuple[int, int]:
    """Build ``cfg.model`` and return (params, MAdds for one image).

    Args:
        cfg (Config): A detector or classifier config; its
            ``default_scope`` (mmdet if unset) selects the registries.
        shape (tuple[int, int], optional): Input (height, width); defaults
            to :func:`default_shape`.

    Returns:
        tuple[int, int]: Parameters, and MAdds of one ``shape`` image through
        ``forward(mode='tensor')`` (a detector's backbone, neck and head, no
        box decoding or NMS; a classifier's backbone, neck and head).
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    h, w = shape or default_shape(cfg)
    inputs = torch.randn(1, 3, h, w)
    madds = count_madds(
        model, inputs, forward=lambda x: model(x, mode='tensor')
    )
    return count_params(model), madds


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
