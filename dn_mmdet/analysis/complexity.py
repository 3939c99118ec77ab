"""Parameters and multiply-adds (MAdds) of a model, counted as the DN paper
counts them; ``tools/analysis/get_flops.py`` is its command line.

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

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from dn_mmdet.norm import GroupedFC

__all__ = [
    'DEFAULT_SHAPES',
    'count_madds',
    'count_params',
    'default_shape',
    'model_complexity',
]

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
