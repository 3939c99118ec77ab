"""The safeguards on the real detector: FNA's SSDLite with DN-B / BN, built
from the project's shapes configs and trained by mmengine's Runner on real
COCO files."""
import os.path as osp
import re

import pytest
import torch
from mmengine.registry import MODELS
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint

from dn_mmdet.engine.hooks import (NonFiniteCheckHook, NonFiniteError,
                                   NormInputCheckHook)

# A DN layer in the middle of the backbone (stage 3 of MobileNetV2).
DN_LAYER = 'backbone.stage3.1.depthwise_conv.dn'


def _with_safeguards(cfg):
    """Make sure both hooks run, whether or not the config enables them."""
    hooks = list(cfg.get('custom_hooks', []))
    enabled = {h['type'] for h in list(cfg.default_hooks.values()) + hooks}
    for name in ('NonFiniteCheckHook', 'NormInputCheckHook'):
        if name not in enabled:
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
    return cfg


@pytest.mark.parametrize('config', ['BN_CONFIG', 'DN_CONFIG'])
def test_configs_enable_safeguards_by_default(reliability, shapes_data,
                                              tmp_path, config):
    cfg = reliability.shapes_cfg(
        getattr(reliability, config), shapes_data, tmp_path)
    runner = Runner.from_cfg(cfg)
    types = [type(h) for h in runner.hooks]
    assert NonFiniteCheckHook in types and NormInputCheckHook in types
    ckpt = types.index(
        next(t for t in types if t.__name__ == 'CheckpointHook'))
    assert types.index(NonFiniteCheckHook) < ckpt  # runs before it saves


def test_fault_in_dn_layer_stops_training_and_keeps_checkpoint(
        reliability, shapes_data, tmp_path):
    cfg = _with_safeguards(
        reliability.shapes_cfg(
            reliability.DN_CONFIG, shapes_data, tmp_path, input_size=96))
    iters_per_epoch = reliability.NUM_TRAIN // cfg.train_dataloader.batch_size
    runner = Runner.from_cfg(cfg)
    # First iteration of epoch 2.
    runner.register_hook(reliability.InjectNaN(DN_LAYER, iters_per_epoch))
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert f'forward pass at `{DN_LAYER}` (DynamicNorm2d)' in msg
    assert 'was not applied' in msg
    # The newest checkpoint is epoch 1's, complete and finite.
    latest = osp.join(str(tmp_path), 'epoch_1.pth')
    assert f'`{latest}`' in msg
    with open(tmp_path / 'last_checkpoint') as f:
        assert f.read().strip() == latest
    assert not osp.exists(tmp_path / 'epoch_2.pth')
    state = CheckpointLoader.load_checkpoint(latest)['state_dict']
    assert all(
        torch.isfinite(v).all() for v in state.values()
        if v.is_floating_point())
    fresh = MODELS.build(cfg.model)
    load_checkpoint(fresh, latest, strict=True)


def test_control_fault_without_hooks_trains_through(reliability, shapes_data,
                                                    tmp_path):
    cfg = reliability.shapes_cfg(
        reliability.DN_CONFIG, shapes_data, tmp_path, input_size=96)
    for key in [
            k for k, h in cfg.default_hooks.items()
            if h['type'] == 'NonFiniteCheckHook'
    ]:
        cfg.default_hooks.pop(key)
    cfg.custom_hooks = [
        h for h in cfg.get('custom_hooks', [])
        if h['type'] != 'NonFiniteCheckHook'
    ]
    runner = Runner.from_cfg(cfg)
    runner.register_hook(reliability.InjectNaN(DN_LAYER, 2))
    runner.train()
    state = CheckpointLoader.load_checkpoint(str(tmp_path /
                                                 'epoch_2.pth'))['state_dict']
    assert not all(
        torch.isfinite(v).all()
        for v in state.values() if v.is_floating_point())


def test_bn_detector_batch_size_one(reliability, shapes_data, tmp_path):
    # At 192x192 the SSDLite neck and head reach 1x1 feature maps.
    cfg = _with_safeguards(
        reliability.shapes_cfg(
            reliability.BN_CONFIG, shapes_data, tmp_path, batch_size=1))
    with pytest.raises(ValueError) as err:
        Runner.from_cfg(cfg).train()
    msg = str(err.value)
    assert re.search(
        r'`(neck|bbox_head)\.[\w.]+\.bn` \(BatchNorm2d\) got an '
        r'input of shape \(1, \d+, 1, 1\)', msg), msg
    assert '`train_dataloader.batch_size` (now 1)' in msg


def test_dn_detector_batch_size_one(reliability, shapes_data, tmp_path):
    # 32x32 images: the backbone's last DN layers see 1x1 maps.
    cfg = _with_safeguards(
        reliability.shapes_cfg(
            reliability.DN_CONFIG,
            shapes_data,
            tmp_path,
            batch_size=1,
            input_size=32))
    with pytest.raises(ValueError) as err:
        Runner.from_cfg(cfg).train()
    msg = str(err.value)
    assert re.search(
        r'`backbone\.[\w.]+\.dn` \(DynamicNorm2d\) got an input '
        r'of shape \(1, \d+, 1, 1\)', msg), msg
    assert '`train_dataloader.batch_size` (now 1)' in msg
