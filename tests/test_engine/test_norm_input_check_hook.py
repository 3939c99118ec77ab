"""NormInputCheckHook: a BN layer given one value per channel in training
raises a ValueError naming it, before any update; a last batch of one
sample is reported after the first iteration, not at the end of the epoch.
"""

import pytest
import torch
import torch.nn as nn

from dn_mmdet.engine.hooks import NormInputCheckHook
from dn_mmdet.engine.hooks.norm_input_check_hook import batch_statistics_rule

# ToyNet on 2x2 images: backbone.0 sees 2x2 maps, backbone.1 (stride 2) 1x1.
TINY = 2


def test_batch_size_one_names_the_bn_layer(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        n=4,
        batch_size=1,
        img_size=TINY,
        custom_hooks=[NormInputCheckHook()],
    )
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert msg.startswith(
        '`backbone.1.bn` (BatchNorm2d) got an input of '
        'shape (1, 16, 1, 1) in training, 1 value(s)'
    )
    assert '`train_dataloader.batch_size` to 2' in msg
    assert runner.iter == 0  # before any optimizer step


def test_control_batch_size_one_without_hook_names_nothing(tmp_path, toy):
    runner = toy.build_runner(tmp_path, n=4, batch_size=1, img_size=TINY)
    with pytest.raises(ValueError) as err:
        runner.train()
    assert 'Expected more than 1 value per channel' in str(err.value)
    assert 'backbone.1.bn' not in str(err.value)


def test_batch_size_one_on_larger_maps_trains(tmp_path, toy):
    # One 8x8 image gives every BN at least 16 values a channel.
    runner = toy.build_runner(
        tmp_path,
        n=2,
        batch_size=1,
        max_epochs=1,
        custom_hooks=[NormInputCheckHook()],
    )
    runner.train()
    assert runner.iter == 2


def test_last_single_sample_batch_is_reported_after_first_iteration(
    tmp_path, toy
):
    # 9 samples in batches of 4: the third batch of every epoch holds one.
    runner = toy.build_runner(
        tmp_path, n=9, img_size=TINY, custom_hooks=[NormInputCheckHook()]
    )
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert 'last batch of every epoch will hold 1 sample (9 samples' in msg
    assert '`backbone.1.bn`, which sees 1x1 maps' in msg
    assert 'drop_last=True' in msg
    assert runner.iter == 0  # right after the first iteration


def test_control_last_single_sample_batch_fails_late(tmp_path, toy):
    runner = toy.build_runner(tmp_path, n=9, img_size=TINY)
    with pytest.raises(ValueError, match='Expected more than 1 value'):
        runner.train()
    assert runner.iter == 2  # at the end of the first epoch


def test_last_batch_dropped_trains(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        n=9,
        img_size=TINY,
        drop_last=True,
        max_epochs=1,
        custom_hooks=[NormInputCheckHook()],
    )
    runner.train()
    assert runner.iter == 2


def test_last_batch_of_dn_layers_is_predicted(tmp_path, toy):
    # DN checks a batch itself; the hook predicts its last batch.
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(dict(type='DN', r=4)),
        n=9,
        img_size=TINY,
        custom_hooks=[NormInputCheckHook()],
    )
    with pytest.raises(ValueError, match='`backbone.1.dn`, which sees 1x1'):
        runner.train()
    assert runner.iter == 0


def test_norm_layers_are_named_and_their_children_not_hooked(tmp_path, toy):
    model, hook = toy.ToyNet(dict(type='DN', r=4)), NormInputCheckHook()
    runner = toy.build_runner(tmp_path, model=model, custom_hooks=[hook])
    hook.before_run(runner)
    hook.before_train(runner)
    assert model.backbone[1].dn.layer_name == 'backbone.1.dn'
    # One pre-hook a DN layer, none on its statistics child.
    assert len(model.backbone[1].dn._forward_pre_hooks) == 1
    assert not model.backbone[1].dn.bn._forward_pre_hooks
    hook.after_train(runner)
    assert not model.backbone[1].dn._forward_pre_hooks


def test_batch_statistics_rule_of_torch_bn():
    bn = nn.BatchNorm2d(4)
    assert batch_statistics_rule(bn) == (1, 2)
    assert batch_statistics_rule(bn.eval()) is None
    # Without running statistics BN uses batch statistics in eval mode too
    # (and torch fails the same way there).
    no_stats = nn.BatchNorm2d(4, track_running_stats=False).eval()
    assert batch_statistics_rule(no_stats) == (1, 2)


def test_eval_mode_and_empty_batches_pass(tmp_path, toy):
    model, hook = toy.ToyNet(), NormInputCheckHook()
    runner = toy.build_runner(tmp_path, model=model, custom_hooks=[hook])
    hook.before_train(runner)
    model.eval()
    model.backbone(torch.zeros(1, 3, TINY, TINY))  # running statistics
    model.train()
    model.backbone(torch.zeros(0, 3, TINY, TINY))  # an empty batch
    with pytest.raises(ValueError, match='`backbone.1.bn`'):
        model.backbone(torch.zeros(1, 3, TINY, TINY))
    hook.after_train(runner)
    with pytest.raises(ValueError, match='Expected more than 1 value'):
        model.backbone(torch.zeros(1, 3, TINY, TINY))


def test_dn_refuses_one_value_per_channel_without_the_hook(toy):
    # Before: DN normalised one value per channel to ~0 silently.
    dn = toy.ToyNet(dict(type='DN', r=4)).train().backbone[1].dn
    with pytest.raises(ValueError, match='1 value.s. per channel'):
        dn(torch.randn(1, 16, 1, 1))


def test_dn_frozen_by_norm_eval_uses_running_statistics(toy):
    # A backbone's norm_eval puts DN's statistics child in eval mode, and DN
    # then normalises with running statistics: one value is fine.
    dn = toy.ToyNet(dict(type='DN', r=4)).train().backbone[1].dn
    assert dn.uses_batch_statistics
    dn.bn.eval()
    assert not dn.uses_batch_statistics
    assert dn(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)
