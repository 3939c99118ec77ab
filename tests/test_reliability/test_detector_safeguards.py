"""The safeguards on the real detector: FNA's SSDLite with DN-B / BN, built
from the project's shapes configs and trained by mmengine's Runner on real
COCO files."""

import re

import pytest
import torch
from mmengine.registry import MODELS
from mmengine.runner import Runner, load_checkpoint

from dn_mmdet.engine.hooks import (
    CheckpointAfterValHook,
    CheckpointMatchHook,
    NonFiniteCheckHook,
    NonFiniteError,
    NormInputCheckHook,
)
from dn_mmdet.utils import load_from_local, safe_checkpoint_loading

# A DN layer in the middle of the backbone (stage 3 of MobileNetV2).
DN_LAYER = 'backbone.stage3.1.depthwise_conv.dn'
SAFEGUARDS = (
    NonFiniteCheckHook,
    NormInputCheckHook,
    CheckpointMatchHook,
    CheckpointAfterValHook,
)


def _finite(path):
    state = load_from_local(str(path))['state_dict']
    return all(
        torch.isfinite(v).all()
        for v in state.values()
        if v.is_floating_point()
    )


@pytest.mark.parametrize('kind', ['bn', 'dn'])
def test_configs_enable_safeguards_by_default(
    shapes_cfg, shapes_data, tmp_path, kind
):
    runner = Runner.from_cfg(shapes_cfg(kind, shapes_data, tmp_path))
    types = [type(h) for h in runner.hooks]
    assert all(t in types for t in SAFEGUARDS)
    # Every after_train_iter check runs before the checkpoint hook saves.
    assert types.index(NonFiniteCheckHook) < types.index(
        CheckpointAfterValHook
    )


@pytest.mark.slow
def test_fault_in_dn_layer_stops_training_and_keeps_checkpoint(
    shapes_cfg, shapes_data, tmp_path, toy
):
    cfg = shapes_cfg('dn', shapes_data, tmp_path, batch_size=4, input_size=96)
    runner = Runner.from_cfg(cfg)
    # First iteration of epoch 2 (8 images in batches of 4).
    runner.register_hook(toy.InjectFault(DN_LAYER, at_iter=2))
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert f'forward pass at `{DN_LAYER}` (DynamicNorm2d)' in msg
    assert 'before the optimizer step (not applied)' in msg
    latest = tmp_path / 'epoch_1.pth'
    assert f'`{latest}`, is the last good one' in msg
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(latest)
    assert not (tmp_path / 'epoch_2.pth').exists()
    assert _finite(latest)
    with safe_checkpoint_loading():
        load_checkpoint(MODELS.build(cfg.model), str(latest), strict=True)


@pytest.mark.slow
def test_control_fault_without_the_hook_trains_through(
    shapes_cfg, shapes_data, tmp_path, toy
):
    cfg = shapes_cfg('dn', shapes_data, tmp_path, batch_size=4, input_size=96)
    cfg.default_hooks.pop('nonfinite_check')
    runner = Runner.from_cfg(cfg)
    runner.register_hook(toy.InjectFault(DN_LAYER, at_iter=2))
    runner.train()
    assert not _finite(tmp_path / 'epoch_2.pth')


def test_bn_detector_batch_size_one(shapes_cfg, shapes_data, tmp_path):
    # At 128x128 the SSDLite neck and head reach 1x1 feature maps.
    runner = Runner.from_cfg(
        shapes_cfg('bn', shapes_data, tmp_path, batch_size=1)
    )
    with pytest.raises(ValueError) as err:
        runner.train()
    assert re.match(
        r'`(neck|bbox_head)\.[\w.]+\.bn` \(BatchNorm2d\) got an input of '
        r'shape \(1, \d+, 1, 1\) in training, 1 value\(s\) per channel',
        str(err.value),
    ), str(err.value)
    assert runner.iter == 0
