"""The SSDLite configs: they parse, build, and differ only where they
should."""

import glob
import os.path as osp

import pytest
from helpers import REPO
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import dn_mmdet  # noqa: F401

SSDLITE = osp.join(REPO, 'configs', 'ssdlite')
BN = 'ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'
DN = 'ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'
BN_SHAPES = 'ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
DN_SHAPES = 'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py'
DN_NORM = dict(type='DN', r=16, g='oup', eps=1e-3)


def load(name):
    return Config.fromfile(osp.join(SSDLITE, name))


def flatten(obj, prefix=''):
    """Config -> {dotted.key: leaf}; lists are indexed."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f'{prefix}{k}.'))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f'{prefix}{i}.'))
    else:
        out[prefix[:-1]] = obj
    return out


def diff(a, b):
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


ALL_CONFIGS = sorted(
    glob.glob(osp.join(SSDLITE, '*.py'))
    + glob.glob(osp.join(REPO, 'configs', 'ssdlite_mbv2_*.py'))
)


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=osp.basename)
def test_config_builds_model(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['dn_mmdet']
    assert cfg.custom_imports.allow_failed_imports is False
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'SingleStageDetector'
    assert type(model.backbone).__name__ == 'MobileNetV2DN'
    assert type(model.bbox_head).__name__ == 'FNASSDLiteHead'


@pytest.mark.parametrize('bn, dn', [(BN, DN), (BN_SHAPES, DN_SHAPES)])
def test_bn_and_dn_differ_in_backbone_norm_only(bn, dn):
    bn_cfg, dn_cfg = load(bn), load(dn)
    keys = diff(bn_cfg, dn_cfg)
    assert keys and all(
        k.startswith('model.backbone.norm_cfg.') for k in keys
    ), keys
    assert bn_cfg.model.backbone.norm_cfg == dict(type='BN', eps=1e-3)
    assert dn_cfg.model.backbone.norm_cfg == DN_NORM
    # The neck and head keep BN in the DN detector.
    assert dn_cfg.model.neck.norm_cfg.type == 'BN'
    assert dn_cfg.model.bbox_head.norm_cfg.type == 'BN'


def test_short_names_are_the_full_configs():
    for short, full in (
        ('ssdlite_mbv2_bn_coco.py', BN),
        ('ssdlite_mbv2_dnb_coco.py', DN),
    ):
        short_cfg = Config.fromfile(osp.join(REPO, 'configs', short))
        assert diff(short_cfg, load(full)) == []


@pytest.mark.parametrize(
    'name, expected',
    [
        (
            'ssdlite_mobilenetv2-dnb-r16-g1_2xb64-30e_coco.py',
            {'model.backbone.norm_cfg.g': 1},
        ),
        (
            'ssdlite_mobilenetv2-dnb-r16-goup_2xb8-30e_coco.py',
            {
                'train_dataloader.batch_size': 8,
                'optim_wrapper.optimizer.lr': 0.00625,
            },
        ),
        (
            'ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e-lr0.125_coco.py',
            {'optim_wrapper.optimizer.lr': 0.125},
        ),
    ],
)
def test_dn_ablations_change_one_thing(name, expected):
    cfg, base = load(name), load(DN)
    assert diff(base, cfg) == sorted(expected)
    flat = flatten(cfg.to_dict())
    for key, value in expected.items():
        assert flat[key] == pytest.approx(value)


def test_bn_ablations_match_dn_ablations():
    for bn, dn in (
        (
            'ssdlite_mobilenetv2-bn_2xb8-30e_coco.py',
            'ssdlite_mobilenetv2-dnb-r16-goup_2xb8-30e_coco.py',
        ),
        (
            'ssdlite_mobilenetv2-bn_2xb64-30e-lr0.125_coco.py',
            'ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e-lr0.125_coco.py',
        ),
    ):
        keys = diff(load(bn), load(dn))
        assert all(k.startswith('model.backbone.norm_cfg.') for k in keys)


def test_coco_config_follows_the_paper():
    cfg = load(DN)
    # Optimiser and schedule of FNA (the DN paper, Sec. 4.3).
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.eps, opt.momentum, opt.weight_decay) == (
        'RMSprop',
        0.05,
        1.0,
        0.9,
        4e-5,
    )
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 500
    assert warmup.start_factor == pytest.approx(1 / 3)
    assert warmup.by_epoch is False
    assert steps.type == 'MultiStepLR' and steps.milestones == [18, 25, 28]
    assert steps.gamma == 0.1
    assert cfg.train_cfg.max_epochs == 30 and cfg.train_cfg.val_interval == 1
    assert cfg.auto_scale_lr.base_batch_size == 128
    assert cfg.default_hooks.checkpoint.save_best == 'coco/bbox_mAP'
    # Data.
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.get('norm_cfg') == dict(type='BN', eps=1e-3)
    train = cfg.train_dataloader.dataset
    assert train.type == 'RepeatDataset' and train.times == 5
    steps = {t['type']: t for t in train.dataset.pipeline}
    assert list(steps) == [
        'LoadImageFromFile',
        'LoadAnnotations',
        'PhotoMetricDistortion',
        'Expand',
        'MinIoURandomCrop',
        'Resize',
        'RandomFlip',
        'PackDetInputs',
    ]
    assert steps['Resize']['scale'] == (320, 320)
    assert steps['Resize']['keep_ratio'] is False
    assert steps['Expand']['ratio_range'] == (1, 4)
    assert steps['MinIoURandomCrop']['min_ious'] == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert steps['MinIoURandomCrop']['min_crop_size'] == 0.3
    assert steps['RandomFlip']['prob'] == 0.5
    pre = cfg.model.data_preprocessor
    assert pre.std == [1, 1, 1] and pre.bgr_to_rgb is True
    assert cfg.val_evaluator.type == 'CocoMetric'
    assert cfg.val_evaluator.metric == 'bbox'
    # Model: train/test settings.
    tc = cfg.model.train_cfg
    assert (
        tc.assigner.pos_iou_thr,
        tc.assigner.neg_iou_thr,
        tc.assigner.min_pos_iou,
    ) == (0.5, 0.5, 0.0)
    assert tc.neg_pos_ratio == 3 and tc.smoothl1_beta == 1.0
    test = cfg.model.test_cfg
    assert (test.score_thr, test.nms.iou_threshold, test.max_per_img) == (
        0.02,
        0.6,
        200,
    )


# The other normalisers (SN, MABN + CenConv, GN) beside each BN config: only
# the backbone's norm (and, for MABN, conv) config differs.
NORM_VARIANTS = {
    'sn': (dict(type='SN', eps=1e-3), None),
    'mabn-cenconv': (dict(type='MABN', eps=1e-3), dict(type='CenConv')),
    'gn': (dict(type='GN', num_groups=8, eps=1e-3), None),
}
BN_TWINS = {
    '1xb16-cpu_shapes': BN_SHAPES,
    '2xb64-30e_coco': BN,
    '2xb8-30e_coco': 'ssdlite_mobilenetv2-bn_2xb8-30e_coco.py',
}


@pytest.mark.parametrize('variant', list(NORM_VARIANTS))
@pytest.mark.parametrize('setting', list(BN_TWINS))
def test_norm_variants_differ_from_bn_in_backbone_only(variant, setting):
    bn_cfg = load(BN_TWINS[setting])
    cfg = load(f'ssdlite_mobilenetv2-{variant}_{setting}.py')
    keys = diff(bn_cfg, cfg)
    assert keys and all(
        k.startswith(('model.backbone.norm_cfg.', 'model.backbone.conv_cfg'))
        for k in keys
    ), keys
    norm_cfg, conv_cfg = NORM_VARIANTS[variant]
    got = dict(cfg.model.backbone.norm_cfg)
    if variant == 'mabn-cenconv':
        # B is the per-process batch: the config says it.
        assert got.pop('batch_size') == cfg.train_dataloader.batch_size
        assert (
            got.pop('real_batch_size') % cfg.train_dataloader.batch_size == 0
        )
    assert got == norm_cfg
    assert cfg.model.backbone.get('conv_cfg') == conv_cfg
    assert cfg.model.neck.norm_cfg.type == 'BN'
    assert cfg.model.bbox_head.norm_cfg.type == 'BN'
