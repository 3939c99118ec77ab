"""NonFiniteCheckHook on a real Runner: it stops at the first NaN / Inf, names
the layer, and leaves the last good checkpoint as the newest one.

Each protection has a control run without it, showing the same fault would
otherwise be trained through and checkpointed.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.runner import CheckpointLoader, load_checkpoint

from dn_mmdet.engine.hooks import NonFiniteCheckHook, NonFiniteError
from dn_mmdet.engine.hooks.nonfinite_hook import non_finite_tensors


def _state_dict(path):
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    return ckpt['state_dict']


def _all_finite(state):
    return not non_finite_tensors(
        (k, v) for k, v in state.items() if isinstance(v, torch.Tensor))


def _last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_forward_fault_names_first_layer_and_keeps_last_checkpoint(
        tmp_path, toy):
    # 2 iterations an epoch; the fault is in the first iteration of epoch 2.
    inject = toy.InjectFault('backbone.1.conv', at_iter=2)
    runner = toy.build_runner(
        tmp_path, custom_hooks=[NonFiniteCheckHook(interval=1000), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    # The conv produced the Inf; its BN, the head and the loss only inherit it.
    assert 'forward pass at `backbone.1.conv` (Conv2d)' in msg
    assert 'iteration 3 (epoch 2)' in msg
    assert 'gradient is non-finite' in msg  # stopped before the step
    assert 'epoch_1.pth' in msg and 'lower the learning rate' in msg
    # Nothing saved after the fault: epoch 1 is still the newest checkpoint.
    assert not osp.exists(tmp_path / 'epoch_2.pth')
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')
    state = _state_dict(str(tmp_path / 'epoch_1.pth'))
    assert _all_finite(state)
    load_checkpoint(toy.ToyNet(), str(tmp_path / 'epoch_1.pth'), strict=True)
    # The non-finite update was refused: the weights in memory are finite.
    assert not non_finite_tensors(runner.model.named_parameters())


def test_control_forward_fault_without_hook_is_checkpointed(tmp_path, toy):
    inject = toy.InjectFault('backbone.1.conv', at_iter=2)
    runner = toy.build_runner(tmp_path, custom_hooks=[inject])
    runner.train()  # trains straight through the NaN
    assert inject.fired == 1
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_2.pth')
    assert not _all_finite(_state_dict(str(tmp_path / 'epoch_2.pth')))


def test_gradient_fault_is_not_applied_and_located(tmp_path, toy):
    inject = toy.InjectFault(
        'backbone.0.conv', at_iter=1, where='grad', value=float('nan'))
    runner = toy.build_runner(
        tmp_path, custom_hooks=[NonFiniteCheckHook(interval=1000), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert 'gradient is non-finite' in msg
    assert ('the gradients of some parameters are not. Non-finite parameter '
            'gradients: `backbone.0.conv` (Conv2d: `weight`).') in msg
    assert 'was not applied' in msg
    assert not non_finite_tensors(runner.model.named_parameters())
    assert 'No checkpoint had been saved yet' in msg
    assert not osp.exists(tmp_path / 'epoch_1.pth')


def test_backward_fault_names_the_module_whose_backward_produced_it(
        tmp_path, toy):
    model = toy.ToyNet()
    model.backbone[1].bn = toy.BackwardFaultBN(16)
    inject = toy.InjectFault('backbone.1.bn', at_iter=1, where='input_grad')
    runner = toy.build_runner(
        tmp_path, model=model, custom_hooks=[NonFiniteCheckHook(), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    # Not backbone.1.conv or backbone.0.*, whose gradients are NaN as well.
    assert ('the gradient first becomes non-finite in the backward pass of '
            '`backbone.1.bn` (BackwardFaultBN)') in msg
    assert '`backbone.1.conv` (Conv2d: `weight`)' in msg


def test_control_gradient_fault_without_grad_check_is_applied(tmp_path, toy):
    # Without the pre-step gradient check the NaN update lands in the
    # weights; the epoch-end state check still keeps it out of checkpoints.
    inject = toy.InjectFault(
        'backbone.0.conv', at_iter=1, where='grad', value=float('nan'))
    runner = toy.build_runner(
        tmp_path,
        custom_hooks=[
            NonFiniteCheckHook(interval=1000, check_grads=False), inject
        ])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    assert 'at the end of epoch 1 (after iteration 2)' in str(err.value)
    assert '`backbone.0.conv` (Conv2d: `weight`)' in str(err.value)
    assert non_finite_tensors(runner.model.named_parameters())
    assert not osp.exists(tmp_path / 'epoch_1.pth')


def test_loss_is_checked_every_iteration(tmp_path, toy):
    # Gradient check off: the NaN update is applied, and the loss check of
    # the same iteration stops training before the epoch's checkpoint. The
    # replay then sees the damaged weights and says so.
    inject = toy.InjectFault('backbone.1.conv', at_iter=1)
    runner = toy.build_runner(
        tmp_path,
        custom_hooks=[
            NonFiniteCheckHook(interval=1000, check_grads=False), inject
        ])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert 'iteration 2 (epoch 1): the loss is non-finite: loss=nan' in msg
    assert 'update is applied in memory but was not saved' in msg
    assert "own parameters (weight) are non-finite" in msg
    assert not osp.exists(tmp_path / 'epoch_1.pth')


@pytest.mark.parametrize('interval', [1, 1000])
def test_running_statistic_caught_before_checkpoint(tmp_path, toy, interval):
    # An Inf running variance with finite outputs, loss and gradients: only
    # the state check sees it, at the next interval or at the epoch's end.
    inject = toy.InjectFault('backbone.1.bn', at_iter=2, where='running_var')
    runner = toy.build_runner(
        tmp_path, custom_hooks=[NonFiniteCheckHook(interval=interval), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert '`backbone.1.bn` (BatchNorm2d: `running_var`)' in msg
    when = 'at iteration 3 (epoch 2)' if interval == 1 else \
        'at the end of epoch 2 (after iteration 4)'
    assert when in msg
    assert not osp.exists(tmp_path / 'epoch_2.pth')
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')
    assert _all_finite(_state_dict(str(tmp_path / 'epoch_1.pth')))


def test_control_running_statistic_without_hook_is_checkpointed(tmp_path, toy):
    inject = toy.InjectFault('backbone.1.bn', at_iter=2, where='running_var')
    toy.build_runner(tmp_path, custom_hooks=[inject]).train()
    state = _state_dict(str(tmp_path / 'epoch_2.pth'))
    assert not torch.isfinite(state['backbone.1.bn.running_var']).all()


def test_iteration_based_checkpoint_is_guarded(tmp_path, toy):
    # The state check runs whenever an iteration-based CheckpointHook is
    # about to save, whatever the hook's own interval.
    inject = toy.InjectFault('backbone.1.bn', at_iter=3, where='running_var')
    runner = toy.build_runner(
        tmp_path,
        custom_hooks=[NonFiniteCheckHook(interval=1000), inject],
        train_cfg=dict(by_epoch=False, max_iters=6),
        checkpoint=dict(
            type='CheckpointHook',
            by_epoch=False,
            interval=2,
            max_keep_ckpts=1))
    with pytest.raises(NonFiniteError):
        runner.train()
    assert not osp.exists(tmp_path / 'iter_4.pth')
    # CheckpointHook deletes the oldest kept checkpoint (max_keep_ckpts=1)
    # before writing the next: the check must run before it even starts.
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    assert _all_finite(_state_dict(str(tmp_path / 'iter_2.pth')))


def test_refuses_to_save_non_finite_checkpoint(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path, max_epochs=1, custom_hooks=[NonFiniteCheckHook()])
    runner.train()
    with torch.no_grad():
        runner.model.head.bias[0] = float('nan')
    with pytest.raises(NonFiniteError, match='`head.bias`'):
        runner.save_checkpoint(str(tmp_path), 'poisoned.pth')
    assert not osp.exists(tmp_path / 'poisoned.pth')


def test_poisoned_load_from_fails_before_training(tmp_path, toy):
    model = toy.ToyNet()
    state = model.state_dict()
    state['head.weight'][0, 0] = float('inf')
    path = str(tmp_path / 'poisoned.pth')
    torch.save(dict(state_dict=state), path)
    runner = toy.build_runner(
        tmp_path / 'work', custom_hooks=[NonFiniteCheckHook()], load_from=path)
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    assert 'before training started' in str(err.value)
    assert '`head` (Linear: `weight`)' in str(err.value)
    assert runner.iter == 0


def test_clean_run_is_untouched(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path, custom_hooks=[NonFiniteCheckHook(interval=1)])
    runner.train()
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_2.pth')
    # The optimizer pre-step hook is removed after training.
    assert not runner.optim_wrapper.optimizer._optimizer_step_pre_hooks


def test_invalid_interval():
    with pytest.raises(ValueError, match='interval'):
        NonFiniteCheckHook(interval=0)


def test_non_finite_tensors_lists_in_order():
    named = [('a', torch.ones(2)), ('b', torch.tensor([1., float('nan')])),
             ('n', torch.tensor([3])), ('c', torch.tensor([float('-inf')]))]
    assert non_finite_tensors(named) == ['b', 'c']
    assert non_finite_tensors([]) == []


# --------------------------------------------------------------- DN ---
DN = dict(type='DN', r=4)


def test_dn_statistic_is_reported_under_the_dn_layer(tmp_path, toy):
    inject = toy.InjectFault('backbone.1.dn', at_iter=2, where='running_var')
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(DN),
        custom_hooks=[NonFiniteCheckHook(interval=1), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    assert ('buffers (BN / DN running statistics) of `backbone.1.dn` '
            '(DynamicNorm2d: `bn.running_var`)') in str(err.value)
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')


def test_fault_inside_dn_names_the_dn_layer(tmp_path, toy):
    # FC2 of the SC-Module outputs the (alpha, lambda) deltas.
    inject = toy.InjectFault('backbone.0.dn.sc.fc2', at_iter=1)
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(DN),
        custom_hooks=[NonFiniteCheckHook(), inject])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    assert ('forward pass at `backbone.0.dn.sc.fc2` (GroupedFC, inside DN '
            'layer `backbone.0.dn`)') in str(err.value)


def test_dn_c_divergence_is_stopped_with_a_good_checkpoint(tmp_path, toy):
    # DN-C at an absurd learning rate: a real divergence, no injection.
    torch.manual_seed(0)  # the SC-Module and the head initialise on build
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(dict(type='DN', r=4, mode='C2')),
        lr=1e4,
        max_epochs=10,
        randomness=dict(seed=0),
        custom_hooks=[NonFiniteCheckHook()])
    with pytest.raises(NonFiniteError) as err:
        runner.train()
    msg = str(err.value)
    assert re.search(
        r'inside DN layer `backbone\.\d\.dn`|backward pass of '
        r'`backbone\.\d\.dn`', msg), msg
    assert 'DN-C' in msg
    latest = _last_checkpoint(tmp_path)
    assert _all_finite(_state_dict(latest))
    load_checkpoint(
        toy.ToyNet(dict(type='DN', r=4, mode='C2')), latest, strict=True)


def test_grad_scaler_steps_are_left_to_the_scaler(tmp_path, toy):
    # An optimizer that supports AMP scaling (e.g. fused Adam) receives the
    # still-scaled gradients plus ``found_inf`` and skips Inf steps itself.
    hook = NonFiniteCheckHook()
    runner = toy.build_runner(tmp_path, max_epochs=1, custom_hooks=[hook])
    runner.train()
    optimizer = runner.optim_wrapper.optimizer
    head = runner.model.head.weight
    head.grad = torch.full_like(head, float('inf'))
    hook._before_step(optimizer, (), dict(found_inf=torch.ones(())))
    with pytest.raises(NonFiniteError, match='gradient is non-finite'):
        hook._before_step(optimizer, (), {})
