"""The stage-1 (ImageNet-100) configs: one per row of the paper's Tables 1,
2, 3, 4 (batch 8), 6, 7 and 8, each with the row's size counted by the
project's size tool (tools/analysis/get_flops.py) and the row's recipe."""

import json
from pathlib import Path

import pytest
from helpers import REPO
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from dn_mmdet.norm import DynamicNorm2d, SEBatchNorm2d

MBV2 = 'configs/mobilenet_v2/mobilenet-v2-{}_in100.py'
RES = 'configs/resnet/{}_in100.py'

# (config, paper #params in M, paper MAdds in M at 224). MobileNetV2 tables
# (1, 2, 4, 6, 7, 8) round to two decimals; Table 3 (ResNet) truncates
# (11.2278M is printed 11.22M, 12.5250M 12.52M, 21.8563M 21.85M).
ROWS = [
    (MBV2.format('bn_1xb64-240e'), 2.35, 299.62),
    (MBV2.format('se-r16_1xb64-240e'), 3.73, 300.98),
    (MBV2.format('dnc1-r16_1xb64-240e-lr0.1'), 3.03, 301.02),
    (MBV2.format('dnc2-r16_1xb64-240e-lr0.1'), 3.03, 301.05),
    (MBV2.format('dnb-r16-g1_1xb64-240e'), 3.03, 300.34),
    (MBV2.format('dnb-r16-goup_1xb64-240e'), 4.36, 301.66),
    (MBV2.format('dnb-r8-g1_1xb64-240e'), 3.72, 301.02),
    (MBV2.format('dnb-r32-g1_1xb64-240e'), 2.69, 300.00),
    (MBV2.format('dnb-r16-g2_1xb64-240e'), 3.07, 300.37),
    (MBV2.format('dnb-r16-g4_1xb64-240e'), 3.14, 300.44),
    (MBV2.format('bn_1xb8-120e'), 2.35, 299.62),
    (MBV2.format('dnb-r16-g1_1xb8-120e'), 3.03, 300.34),
    (MBV2.format('bn_1xb64-240e-lr0.5'), 2.35, 299.62),
    (MBV2.format('dnb-r16-g1_1xb64-240e-lr0.5'), 3.03, 300.34),
    (RES.format('resnet18-bn_1xb64-240e'), 11.22, 1730.12),
    (RES.format('resnet18-bn_1xb64-240e-lr0.5'), 11.22, 1730.12),
    (RES.format('resnet18-bn_1xb64-240e-lr0.8'), 11.22, 1730.12),
    (RES.format('resnet18-dnb-r4-goup_1xb64-240e'), 12.52, 1731.43),
    (RES.format('resnet18-dnb-r4-goup_1xb64-240e-lr0.5'), 12.52, 1731.43),
    (RES.format('resnet18-dnb-r16-goup_1xb64-240e-lr0.8'), 11.54, 1730.45),
    (RES.format('resnet34-bn_1xb64-240e'), 21.33, 3579.81),
    (RES.format('resnet34-bn_1xb8-120e'), 21.33, 3579.81),
    (RES.format('resnet34-bn_1xb4-60e'), 21.33, 3579.81),
    (RES.format('resnet34-dnb-r16-goup_1xb64-240e'), 21.85, 3580.35),
    (RES.format('resnet34-dnb-r16-goup_1xb8-120e'), 21.85, 3580.35),
    (RES.format('resnet34-dnb-r16-goup_1xb4-60e'), 21.85, 3580.35),
    (RES.format('resnet34-dnb-r32-goup_1xb64-240e'), 21.58, 3580.08),
]

# Counted MAdds that differ from the paper's, and why. DN-B (16, 4): the four
# 144-channel layers have h = 9 and h // g = 2 groups do not divide 9; the
# layer falls back to 1 group (2 * 144 * 9 MAdds in FC2), where 3 groups
# (the divisor of 9 nearest to 9 / 4) would count 6,912 fewer, 300,440,064 =
# 300.44M, with 3.1367M params (still 3.14M).
MADDS_COUNTED_OTHERWISE = {MBV2.format('dnb-r16-g4_1xb64-240e'): 300.45}

_sizes = {}


@pytest.fixture
def sizes(get_flops):
    """(params, MAdds at 224) of a config's model, counted once a model."""

    def count(cfg):
        key = json.dumps(cfg.model.to_dict(), sort_keys=True)
        if key not in _sizes:
            _sizes[key] = get_flops.model_complexity(cfg)
        return _sizes[key]

    return count


def to_paper_precision(count, config):
    """Millions to two decimals as the row's table prints them."""
    millions = count / 1e6
    if '/resnet/' in config:  # Table 3 truncates
        return int(millions * 100 + 1e-6) / 100
    return round(millions, 2)


def test_every_stage1_config_is_a_row():
    on_disk = {
        str(p.relative_to(REPO))
        for folder in ('configs/mobilenet_v2', 'configs/resnet')
        for p in (REPO / folder).glob('*_in100.py')
    }
    assert on_disk == {row[0] for row in ROWS}


@pytest.mark.parametrize(
    'config,params,madds', ROWS, ids=[Path(r[0]).stem for r in ROWS]
)
def test_row_sizes(sizes, config, params, madds):
    cfg = Config.fromfile(str(REPO / config))
    counted_params, counted_madds = sizes(cfg)
    assert to_paper_precision(counted_params, config) == params
    if '/mobilenet_v2/' in config:
        madds = MADDS_COUNTED_OTHERWISE.get(config, madds)
        assert round(counted_madds / 1e6, 2) == madds


def test_resnet_madds_differ_from_the_paper_in_the_stem_only(sizes):
    """Table 3's ResNet MAdds are 83.49M below the count of the standard
    ResNet-18 and ResNet-34 at 224 alike: the difference lies in the part
    they share (their 7x7 stem alone costs 118.01M). What DN adds matches
    the paper to the digit."""
    counted = {
        config: sizes(Config.fromfile(str(REPO / config)))[1] / 1e6
        for config, _, _ in ROWS
        if '/resnet/' in config
    }
    paper = {config: madds for config, _, madds in ROWS if config in counted}
    gaps = {round(counted[c] - paper[c], 2) for c in counted}
    assert gaps == {83.49}
    stem = 7 * 7 * 3 * 64 * 112 * 112
    assert stem / 1e6 > 83.49


def test_recipe():
    """Batch 64, 240 epochs, SGD lr 0.2 momentum 0.9 wd 4e-5, cosine per
    iteration, label smoothing 0.1, RandomResizedCrop 224 + flip, test
    resize 256 + centre crop 224; val every 5 epochs, best kept; and what
    each row varies."""
    cfg = Config.fromfile(str(REPO / ROWS[0][0]))
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.auto_scale_lr.base_batch_size == 64
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=0.2, momentum=0.9, weight_decay=4e-5
    )
    assert cfg.param_scheduler.type == 'CosineAnnealingLR'
    assert cfg.param_scheduler.convert_to_iter_based
    assert cfg.param_scheduler.T_max == cfg.train_cfg.max_epochs == 240
    assert cfg.train_cfg.val_interval == 5
    assert cfg.default_hooks.checkpoint.save_best == 'auto'
    assert cfg.model.head.loss.label_smooth_val == 0.1
    assert [t['type'] for t in cfg.train_pipeline] == [
        'LoadImageFromFile',
        'RandomResizedCrop',
        'RandomFlip',
        'PackInputs',
    ]
    assert cfg.train_pipeline[1].scale == 224
    assert cfg.test_pipeline[1].scale == 256
    assert cfg.test_pipeline[2].crop_size == 224
    assert cfg.val_dataloader.dataset.ann_file == 'val.txt'
    assert cfg.test_dataloader.dataset.ann_file == 'test.txt'
    assert cfg.val_evaluator.topk == (1, 5)

    def differences(config):
        other = Config.fromfile(str(REPO / config)).to_dict()
        base = cfg.to_dict()
        return {
            k for k in set(base) | set(other) if base.get(k) != other.get(k)
        }

    assert differences(MBV2.format('dnb-r16-g1_1xb64-240e')) == {'model'}
    assert differences(MBV2.format('dnc1-r16_1xb64-240e-lr0.1')) == {
        'model',
        'optim_wrapper',
    }
    assert differences(MBV2.format('bn_1xb8-120e')) == {
        'train_dataloader',
        'param_scheduler',
        'train_cfg',
    }
    small = Config.fromfile(str(REPO / MBV2.format('dnb-r16-g1_1xb8-120e')))
    assert small.train_dataloader.batch_size == 8
    assert small.param_scheduler.T_max == small.train_cfg.max_epochs == 120
    assert small.optim_wrapper.optimizer.lr == 0.2
    high = Config.fromfile(str(REPO / MBV2.format('bn_1xb64-240e-lr0.5')))
    assert high.optim_wrapper.optimizer.lr == 0.5


@pytest.mark.parametrize(
    'config,norm_type,count',
    [
        (MBV2.format('dnb-r16-g1_1xb64-240e'), DynamicNorm2d, 52),
        (MBV2.format('se-r16_1xb64-240e'), SEBatchNorm2d, 52),
        (RES.format('resnet34-dnb-r16-goup_1xb4-60e'), DynamicNorm2d, 36),
    ],
)
def test_every_norm_is_replaced(config, norm_type, count):
    cfg = Config.fromfile(str(REPO / config))
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model)
    assert sum(isinstance(m, norm_type) for m in model.modules()) == count
