"""NormInputCheckHook: one value per channel in a BN / DN layer in training
becomes a ValueError naming the layer, the shape and the config key."""
import pytest
import torch
import torch.nn as nn

from dn_mmdet.engine.hooks import NormInputCheckHook
from dn_mmdet.engine.hooks.norm_input_check_hook import (
    batch_stat_norm_layers, uses_batch_statistics)

# ToyNet on 2x2 images: backbone.0 sees 2x2 maps, backbone.1 (stride 2) 1x1.
TINY = 2


def test_batch_size_one_names_layer_and_config_key(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        n=4,
        batch_size=1,
        img_size=TINY,
        custom_hooks=[NormInputCheckHook()])
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert '`backbone.1.bn` (BatchNorm2d)' in msg
    assert '(1, 16, 1, 1)' in msg
    assert '`train_dataloader.batch_size` (now 1)' in msg
    assert runner.iter == 0  # before any optimizer step


def test_control_batch_size_one_without_hook_is_cryptic(tmp_path, toy):
    runner = toy.build_runner(tmp_path, n=4, batch_size=1, img_size=TINY)
    with pytest.raises(ValueError) as err:
        runner.train()
    assert 'Expected more than 1 value per channel' in str(err.value)
    assert 'backbone.1.bn' not in str(err.value)


def test_batch_size_one_on_larger_maps_trains(tmp_path, toy):
    # One image of 8x8 gives every BN at least 16 values a channel: fine.
    runner = toy.build_runner(
        tmp_path,
        n=2,
        batch_size=1,
        img_size=8,
        max_epochs=1,
        custom_hooks=[NormInputCheckHook()])
    runner.train()
    assert runner.iter == 2


def test_last_single_sample_batch_is_predicted_after_first_iteration(
        tmp_path, toy):
    # 9 samples in batches of 4: the third batch of every epoch holds one.
    runner = toy.build_runner(
        tmp_path,
        n=9,
        batch_size=4,
        img_size=TINY,
        custom_hooks=[NormInputCheckHook()])
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert 'last batch of every epoch will hold 1 sample' in msg
    assert '`backbone.1.bn` (BatchNorm2d)' in msg
    assert 'drop_last=True' in msg
    assert runner.iter == 0  # reported right after the first iteration


def test_control_last_single_sample_batch_fails_late(tmp_path, toy):
    runner = toy.build_runner(tmp_path, n=9, batch_size=4, img_size=TINY)
    with pytest.raises(ValueError, match='Expected more than 1 value'):
        runner.train()
    assert runner.iter == 2  # only at the end of the first epoch


def test_last_batch_dropped_trains(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        n=9,
        batch_size=4,
        img_size=TINY,
        drop_last=True,
        max_epochs=1,
        custom_hooks=[NormInputCheckHook()])
    runner.train()
    assert runner.iter == 2


def test_uses_batch_statistics():
    bn = nn.BatchNorm2d(4)
    assert uses_batch_statistics(bn)
    bn.eval()
    assert not uses_batch_statistics(bn)
    # Without running statistics BN normalises with batch statistics in
    # eval mode too, and torch fails the same way.
    no_stats = nn.BatchNorm2d(4, track_running_stats=False).eval()
    assert uses_batch_statistics(no_stats)


def test_eval_mode_and_empty_inputs_pass(tmp_path, toy):
    model = toy.ToyNet()
    hook = NormInputCheckHook()
    runner = toy.build_runner(
        tmp_path, model=model, max_epochs=1, custom_hooks=[hook])
    hook.before_train(runner)
    model.eval()
    model(torch.zeros(1, 3, TINY, TINY), mode='tensor')  # running stats
    model.train()
    model.backbone(torch.zeros(0, 3, TINY, TINY))  # empty batch: no-op
    with pytest.raises(ValueError, match='backbone.1.bn'):
        model.backbone(torch.zeros(1, 3, TINY, TINY))
    hook.after_train(runner)
    with pytest.raises(ValueError, match='Expected more than 1 value'):
        model.backbone(torch.zeros(1, 3, TINY, TINY))


def test_norm_layers_found(toy):
    names = [n for n, _ in batch_stat_norm_layers(toy.ToyNet())]
    assert names == ['backbone.0.bn', 'backbone.1.bn']


def test_dn_batch_size_one_names_dn_layer(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(dict(type='DN', r=4)),
        n=4,
        batch_size=1,
        img_size=TINY,
        custom_hooks=[NormInputCheckHook()])
    with pytest.raises(ValueError) as err:
        runner.train()
    msg = str(err.value)
    assert '`backbone.1.dn` (DynamicNorm2d)' in msg
    assert '(1, 16, 1, 1)' in msg
    assert '`train_dataloader.batch_size` (now 1)' in msg


def test_control_dn_b_batch_size_one_without_hook_is_refused_by_dn(toy):
    # Without the hook DN itself refuses one value per channel (it once
    # normalised it to 0 silently), naming the layer by its place in the
    # model only once the runner's hooks have named it.
    model = toy.ToyNet(dict(type='DN', r=4)).train()
    dn = model.backbone[1].dn
    with pytest.raises(ValueError, match='1 value.s. per channel'):
        dn(torch.randn(1, 16, 1, 1))


def test_dn_frozen_by_norm_eval_is_not_checked(toy):
    # A backbone's norm_eval puts DN's statistics child in eval mode, and DN
    # then normalises with running statistics: one value is fine.
    model = toy.ToyNet(dict(type='DN', r=4)).train()
    dn = model.backbone[1].dn
    assert uses_batch_statistics(dn)
    dn.bn.eval()
    assert not uses_batch_statistics(dn)
