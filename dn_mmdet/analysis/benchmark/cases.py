"""What the norm benchmark measures: its variants, its models and the
steps it times of one (model, variant, batch, size) case.

Models are built through mmengine's registry, as a user's config builds
them; the variant is the backbone's ``norm_cfg``.
"""

from pathlib import Path
from typing import Callable, NamedTuple, Optional

#: The repository's configs (a source checkout or an editable install:
#: configs are not installed with the package).
CONFIG_DIR = Path(__file__).resolve().parents[3] / 'configs'
#: The paper's SSDLite (``mobilenetv2dn`` and ``ssdlite`` by default).
DEFAULT_CONFIG = str(CONFIG_DIR / 'ssdlite_mbv2_bn_coco.py')
#: The shapes detector of the main job (``ssdlite-shapes``).
SHAPES_CONFIG = str(
    CONFIG_DIR
    / 'ssdlite'
    / 'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py'
)

#: Variant name -> the backbone's ``norm_cfg``.
VARIANTS = {
    'bn': dict(type='BN'),
    'dnb-r16-g1': dict(type='DN', r=16, g=1),
    'dnb-r16-goup': dict(type='DN', r=16, g='oup'),
    # DynamicNorm2dReference (dn_mmdet/norm/reference.py), resolved by
    # norm_cfg_of.
    'dnb-r16-g1-reference': dict(type='DNReference', r=16, g=1),
    'dnb-r16-goup-reference': dict(type='DNReference', r=16, g='oup'),
    'sn': dict(type='SN'),
    'sn-plain': dict(type='SN', impl='plain'),
    'mabn': dict(type='MABN'),
    'mabn-cenconv': dict(type='MABN'),
    'gn': dict(type='GN', num_groups=8),
}
#: Variants that also change the backbone's convs (not the lone layer).
CONV_CFGS = {'mabn-cenconv': dict(type='CenConv')}
DEFAULT_VARIANTS = [
    'bn',
    'dnb-r16-g1',
    'dnb-r16-goup',
    'dnb-r16-goup-reference',
]
#: The fast DN variants: the summary's first line per model.
DN_VARIANTS = ('dnb-r16-g1', 'dnb-r16-goup')

#: What the benchmark measures, in the order of its tables.
MODELS = {
    'layer': "lone norm layers at the input shapes of MobileNetV2's 52",
    'mobilenetv2dn': 'MobileNetV2DN, the backbone of --config',
    'mmdet-mobilenetv2': "mmdet's MobileNetV2 backbone, out_indices (4, 7)",
    'resnet18': "mmdet's ResNet-18 backbone, 4 stages out",
    'resnet50': "mmdet's ResNet-50 backbone, 4 stages out",
    'ssdlite': 'the SSDLite of --config, norm in the backbone',
    'ssdlite-shapes': 'the shapes SSDLite (the main job), norm in the '
    'backbone',
}
#: mmdet backbones as a user's config gives them (norm_cfg added).
BACKBONES = {
    'mmdet-mobilenetv2': dict(type='mmdet.MobileNetV2', out_indices=(4, 7)),
    'resnet18': dict(
        type='mmdet.ResNet',
        depth=18,
        out_indices=(0, 1, 2, 3),
        norm_eval=False,
        frozen_stages=-1,
    ),
    'resnet50': dict(
        type='mmdet.ResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        norm_eval=False,
        frozen_stages=-1,
    ),
}
DETECTORS = ('ssdlite', 'ssdlite-shapes')
DEFAULT_MODELS = ['layer', 'mobilenetv2dn', 'ssdlite']
#: The backbones' output stride: the smallest input side.
MIN_SIZE = 32


def parse_dims(text, count):
    """``'2x384x8x8'`` -> ``(2, 384, 8, 8)``: ``count`` positive integers
    joined by 'x' (either case).

    Raises:
        ValueError: naming ``text`` and what was expected.
    """
    parts = text.lower().split('x')
    if len(parts) != count or not all(
        p.isdigit() and int(p) > 0 for p in parts
    ):
        raise ValueError(
            f"{text!r}: expected {count} positive integers joined by 'x'"
        )
    return tuple(int(p) for p in parts)


def build_detector(config, norm_cfg, conv_cfg=None):
    """The detector of ``config`` (loaded as tools/train.py loads it, its
    ``custom_imports`` included) with ``norm_cfg`` in the backbone."""
    from mmdet.registry import MODELS as REGISTRY
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.norm_cfg = norm_cfg
    if conv_cfg is not None:
        cfg.model.backbone.conv_cfg = conv_cfg
    return REGISTRY.build(cfg.model)


def build_model(model, norm_cfg, conv_cfg=None, config=DEFAULT_CONFIG):
    """``model`` (a key of :data:`MODELS` but ``layer``) with ``norm_cfg``,
    built through the registry as a user's config builds it.

    Args:
        model (str): e.g. ``'resnet18'``.
        norm_cfg (dict): The backbone's norm, e.g. ``dict(type='DN')``.
        conv_cfg (dict, optional): The backbone's convs.
        config (str): The detector config of ``mobilenetv2dn`` and
            ``ssdlite``.
    """
    if model == 'mobilenetv2dn':
        return build_detector(config, norm_cfg, conv_cfg).backbone
    if model == 'ssdlite':
        return build_detector(config, norm_cfg, conv_cfg)
    if model == 'ssdlite-shapes':
        return build_detector(SHAPES_CONFIG, norm_cfg, conv_cfg)
    from mmdet.registry import MODELS as REGISTRY
    from mmdet.utils import register_all_modules
    from mmengine.utils import import_modules_from_strings

    # As a config with custom_imports = dict(imports=['dn_mmdet']).
    import_modules_from_strings(['dn_mmdet'])
    register_all_modules()
    cfg = dict(BACKBONES[model], norm_cfg=norm_cfg)
    if conv_cfg is not None:
        cfg['conv_cfg'] = conv_cfg
    return REGISTRY.build(cfg)


def norm_input_shapes(config, size):
    """(C, H, W) of each norm layer's input in MobileNetV2DN (the backbone
    of ``config``) at input side ``size``."""
    import torch

    backbone = build_model(
        'mobilenetv2dn', dict(type='BN'), config=config
    ).eval()
    shapes = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, inp: shapes.append(tuple(inp[0].shape[1:]))
        )
        for m in backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        backbone(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return shapes


def norm_cfg_of(variant):
    """The variant's norm config; the reference DN is given by its class
    (it is deliberately not registered)."""
    norm_cfg = dict(VARIANTS[variant])
    if norm_cfg['type'] == 'DNReference':
        from dn_mmdet.norm.reference import DynamicNorm2dReference

        norm_cfg['type'] = DynamicNorm2dReference
    return norm_cfg


class Steps(NamedTuple):
    """What a worker times of one variant of a case (see
    :func:`build_steps`)."""

    model: object  # the nn.Module (None for the lone layers)
    set_mode: Callable[[bool], object]  # train(True) / eval (False)
    train_step: Callable[[], None]
    infer_step: Optional[Callable[[], None]]  # None for the lone layers


def build_steps(
    model_name,
    variant,
    batch,
    size,
    config=DEFAULT_CONFIG,
    device='cpu',
    channels_last=False,
    compile=False,
):
    """The :class:`Steps` of one variant of a case.

    A backbone's training step is forward, backward of the mean of its
    outputs and an SGD step; a detector's, the losses (target assignment
    and hard negative mining included), backward and the step; inference is
    the network alone (no box decoding or NMS). The lone layers
    (``model_name='layer'``: MobileNetV2's 52 norm input shapes) are timed
    in training only (no ``model``, no ``infer_step``).

    Args:
        model_name (str): A key of :data:`MODELS`.
        variant (str): A key of :data:`VARIANTS`.
        batch (int): Images a step (>= 2).
        size (int): Input side in pixels.
        config (str): See :func:`build_model`.
        device (str): ``'cpu'`` or ``'cuda'``.
        channels_last (bool): Model and inputs in channels-last layout.
        compile (bool): Steps through ``torch.compile`` of the model
            (inductor, torch's default).

    Models are fused as the runner's ``FuseNormActHook`` fuses them
    (:func:`dn_mmdet.norm.fuse_norm_act`, where this ``dn_mmdet`` has it).
    """
    import torch
    from mmcv.cnn import build_norm_layer

    torch.manual_seed(0)
    norm_cfg = norm_cfg_of(variant)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    if model_name == 'layer':
        layers = []
        for c, h, w in norm_input_shapes(config, size):
            norm = build_norm_layer(norm_cfg, c)[1].to(device).train()
            x = torch.randn(batch, c, h, w, device=device)
            x = x.to(memory_format=fmt).requires_grad_(True)
            layers.append((norm, x, torch.randn_like(x)))

        def layer_step():
            for norm, x, grad in layers:
                norm(x).backward(grad)

        return Steps(None, lambda training: None, layer_step, None)

    model = build_model(
        model_name, norm_cfg, CONV_CFGS.get(variant), config
    ).to(device)
    model = model.to(memory_format=fmt)
    _fuse_norm_act(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    net = torch.compile(model) if compile else model
    if model_name not in DETECTORS:  # a backbone: a tuple of feature maps
        images = torch.randn(batch, 3, size, size, device=device).to(
            memory_format=fmt
        )

        def train_step():
            optimizer.zero_grad()
            sum(o.float().mean() for o in net(images)).backward()
            optimizer.step()

        def infer_step():
            net(images)
    else:
        from mmdet.testing import demo_mm_inputs

        num_classes = model.bbox_head.num_classes
        data = demo_mm_inputs(
            batch,
            [[3, size, size]] * batch,
            num_items=[3] * batch,
            num_classes=num_classes,
        )
        train_batch = model.data_preprocessor(data, True)
        eval_batch = model.data_preprocessor(data, False)

        def train_step():
            optimizer.zero_grad()
            losses = net(**train_batch, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()
            optimizer.step()

        def infer_step():
            # The network alone: box decoding and NMS depend on how many
            # boxes the (untrained) weights score above the threshold.
            net(eval_batch['inputs'], mode='tensor')

    return Steps(model, model.train, train_step, infer_step)


def _fuse_norm_act(model):
    """``fuse_norm_act(model)``; a ``dn_mmdet`` without it (the code a
    ``--before`` run measures) fuses on its own."""
    try:
        from dn_mmdet.norm import fuse_norm_act
    except ImportError:
        return
    fuse_norm_act(model)
