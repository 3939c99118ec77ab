"""NonFiniteCheckHook on a real Runner: it stops at the first NaN / Inf, names
where it appeared, and leaves the last good checkpoint as the newest one.

Each protection has a control run without the hook, showing that the same
fault would otherwise be trained through and checkpointed.
"""

import os.path as osp
import re

import pytest
import torch
from mmengine.runner import load_checkpoint

from dn_mmdet.engine.hooks import NonFiniteCheckHook, NonFiniteError
from dn_mmdet.utils import load_from_local, safe_checkpoint_loading

DN = dict(type='DN', r=4)


def _state(path):
    return load_from_local(str(path))['state_dict']


def _finite(state):
    return all(
        torch.isfinite(v).all()
        for v in state.values()
        if v.is_floating_point()
    )


def _last_checkpoint(work_dir):
    return (work_dir / 'last_checkpoint').read_text().strip()


def _train_until_error(runner):
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    return str(err.value)


def test_forward_fault_is_located_and_not_saved(tmp_path, toy):
    # 2 iterations an epoch; the fault is in the first iteration of epoch 2.
    runner = toy.build_runner(
        tmp_path,
        custom_hooks=[
            NonFiniteCheckHook(),
            toy.InjectFault('backbone.1.conv', at_iter=2),
        ],
    )
    msg = _train_until_error(runner)
    # The conv produced the NaN; its BN, the head and the loss inherit it.
    assert (
        'at iteration 3: non-finite gradients before the optimizer '
        'step (not applied)' in msg
    )
    assert 'forward pass at `backbone.1.conv` (Conv2d)' in msg
    assert f'`{tmp_path / "epoch_1.pth"}`, is the last good one' in msg
    assert 'lower the learning rate' in msg
    assert not (tmp_path / 'epoch_2.pth').exists()
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')
    assert _finite(_state(tmp_path / 'epoch_1.pth'))
    with safe_checkpoint_loading():
        load_checkpoint(
            toy.ToyNet(), str(tmp_path / 'epoch_1.pth'), strict=True
        )
    # The non-finite update was refused: the weights in memory are finite.
    assert _finite(dict(runner.model.named_parameters()))


def test_control_forward_fault_without_hook_is_checkpointed(tmp_path, toy):
    inject = toy.InjectFault('backbone.1.conv', at_iter=2)
    toy.build_runner(tmp_path, custom_hooks=[inject]).train()
    assert inject.fired == 1
    assert not _finite(_state(tmp_path / 'epoch_2.pth'))


def test_backward_fault_names_the_gradients(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        custom_hooks=[
            NonFiniteCheckHook(),
            toy.InjectFault('backbone.0.conv', at_iter=1, where='grad'),
        ],
    )
    msg = _train_until_error(runner)
    assert 'nearest the loss: `backbone.0.conv` (Conv2d: `weight`)' in msg
    assert (
        'finite forward pass and loss: the fault is in the backward '
        'pass' in msg
    )
    assert 'No checkpoint had been saved' in msg
    assert _finite(dict(runner.model.named_parameters()))


@pytest.mark.parametrize('by_epoch', [True, False])
def test_non_finite_statistic_is_never_saved(tmp_path, toy, by_epoch):
    # An Inf running variance leaves outputs, loss and gradients finite:
    # the checkpoint it would go into is refused, by epoch or by iteration.
    inject = toy.InjectFault(
        'backbone.1.bn', at_iter=2, where='running_var', value=float('inf')
    )
    kwargs = (
        {}
        if by_epoch
        else dict(
            train_cfg=dict(by_epoch=False, max_iters=6),
            checkpoint=dict(
                type='CheckpointHook',
                by_epoch=False,
                interval=2,
                max_keep_ckpts=2,
            ),
        )
    )
    runner = toy.build_runner(
        tmp_path, custom_hooks=[NonFiniteCheckHook(), inject], **kwargs
    )
    msg = _train_until_error(runner)
    good, bad = (
        ('epoch_1.pth', 'epoch_2.pth')
        if by_epoch
        else ('iter_2.pth', 'iter_4.pth')
    )
    assert (
        'refusing to save a checkpoint: non-finite `backbone.1.bn` '
        '(BatchNorm2d: `running_var`)' in msg
    )
    assert f'`{tmp_path / good}`, is the last good one' in msg
    assert not (tmp_path / bad).exists()
    assert _last_checkpoint(tmp_path) == str(tmp_path / good)
    assert _finite(_state(tmp_path / good))


def test_control_statistic_without_hook_is_checkpointed(tmp_path, toy):
    inject = toy.InjectFault(
        'backbone.1.bn', at_iter=2, where='running_var', value=float('inf')
    )
    toy.build_runner(tmp_path, custom_hooks=[inject]).train()
    state = _state(tmp_path / 'epoch_2.pth')
    assert not torch.isfinite(state['backbone.1.bn.running_var']).all()


def test_poisoned_load_from_fails_before_training(tmp_path, toy):
    state = toy.ToyNet().state_dict()
    state['head.weight'][0, 0] = float('inf')
    path = tmp_path / 'poisoned.pth'
    torch.save(dict(state_dict=state), path)
    runner = toy.build_runner(
        tmp_path / 'work',
        custom_hooks=[NonFiniteCheckHook()],
        load_from=str(path),
    )
    msg = _train_until_error(runner)
    assert (
        'before training started: non-finite `head` (Linear: `weight`)' in msg
    )
    assert runner.iter == 0


def test_clean_run_is_untouched(tmp_path, toy):
    runner = toy.build_runner(tmp_path, custom_hooks=[NonFiniteCheckHook()])
    runner.train()
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_2.pth')
    # The optimizer's step pre-hook is removed after training.
    assert not runner.optim_wrapper.optimizer._optimizer_step_pre_hooks


def test_steps_of_a_grad_scaler_are_left_to_it(tmp_path, toy):
    # An optimizer that supports AMP scaling (e.g. fused Adam) receives the
    # still-scaled gradients and ``found_inf``, and skips Inf steps itself.
    runner = toy.build_runner(
        tmp_path, max_epochs=1, custom_hooks=[NonFiniteCheckHook()]
    )
    runner.train()
    optimizer = runner.optim_wrapper.optimizer
    hook = next(h for h in runner.hooks if isinstance(h, NonFiniteCheckHook))
    runner.model.head.weight.grad = torch.full_like(
        runner.model.head.weight, float('inf')
    )
    hook._check_grads(runner, optimizer, dict(found_inf=torch.ones(())))
    with pytest.raises(NonFiniteError, match='non-finite gradients'):
        hook._check_grads(runner, optimizer, {})


def test_dn_statistic_is_reported_under_the_dn_layer(tmp_path, toy):
    inject = toy.InjectFault(
        'backbone.1.dn', at_iter=2, where='running_var', value=float('inf')
    )
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(DN),
        custom_hooks=[NonFiniteCheckHook(), inject],
    )
    msg = _train_until_error(runner)
    assert (
        'non-finite `backbone.1.dn` (DynamicNorm2d: `bn.running_var`)' in msg
    )
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')


def test_fault_inside_dn_names_the_dn_layer(tmp_path, toy):
    # FC2 of the SC-Module outputs the (alpha, lambda) deltas.
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(DN),
        custom_hooks=[
            NonFiniteCheckHook(),
            toy.InjectFault('backbone.0.dn.sc.fc2', at_iter=1),
        ],
    )
    msg = _train_until_error(runner)
    assert (
        'forward pass at `backbone.0.dn.sc.fc2` (GroupedFC, inside norm '
        'layer `backbone.0.dn`)'
    ) in msg


def test_dn_c_divergence_is_stopped_with_a_good_checkpoint(tmp_path, toy):
    # DN-C at an absurd learning rate: a real divergence, no injection.
    torch.manual_seed(0)
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(dict(type='DN', r=4, mode='C2')),
        lr=1e4,
        max_epochs=10,
        custom_hooks=[NonFiniteCheckHook()],
    )
    msg = _train_until_error(runner)
    assert re.search(r'`backbone\.\d\.dn', msg), msg
    assert 'DN-C' in msg
    latest = _last_checkpoint(tmp_path)
    assert _finite(_state(latest))
    with safe_checkpoint_loading():
        load_checkpoint(
            toy.ToyNet(dict(type='DN', r=4, mode='C2')), latest, strict=True
        )
    assert osp.basename(latest) in msg
