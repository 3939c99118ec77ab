"""CheckpointMatchHook: a checkpoint of another model or config is refused
before anything is loaded (mmengine would load it partly, with a log line),
unless a partial load is asked for."""

import pytest
import torch

from dn_mmdet.engine.hooks import CheckpointMatchHook, CheckpointMismatchError

DN = dict(type='DN', r=4)


@pytest.fixture(scope='module')
def bn_checkpoint(tmp_path_factory, toy):
    """epoch_1.pth of a BN ToyNet run (a real runner checkpoint)."""
    work_dir = tmp_path_factory.mktemp('bn_run')
    toy.build_runner(work_dir, max_epochs=1).train()
    return work_dir / 'epoch_1.pth'


def test_bn_checkpoint_into_dn_model_is_refused(tmp_path, toy, bn_checkpoint):
    runner = toy.build_runner(
        tmp_path,
        model=toy.ToyNet(DN),
        load_from=str(bn_checkpoint),
        custom_hooks=[CheckpointMatchHook()],
    )
    with pytest.raises(CheckpointMismatchError) as err:
        runner.train()
    msg = str(err.value)
    assert f'Checkpoint {bn_checkpoint} does not fit the model' in msg
    assert 'nothing was loaded' in msg
    assert '14 missing from the checkpoint: backbone.0.dn.base_scale' in msg
    assert '10 not in the model: backbone.0.bn.weight' in msg
    assert 'tools/model_converters/bn2dn.py' in msg
    assert 'default_hooks.checkpoint_match.allow_partial=True' in msg
    assert runner.iter == 0


def test_control_bn_checkpoint_into_dn_model_trains_partly_random(
    tmp_path, toy, bn_checkpoint
):
    runner = toy.build_runner(
        tmp_path, model=toy.ToyNet(DN), load_from=str(bn_checkpoint)
    )
    runner.train()  # mmengine: a warning, then training
    assert runner.iter == 4


def test_partial_load_on_request(tmp_path, toy, bn_checkpoint):
    model = toy.ToyNet(DN)
    runner = toy.build_runner(
        tmp_path,
        model=model,
        load_from=str(bn_checkpoint),
        custom_hooks=[CheckpointMatchHook(allow_partial=True)],
    )
    runner.load_or_resume()
    saved = torch.load(bn_checkpoint)['state_dict']
    assert torch.equal(model.head.weight, saved['head.weight'])


def test_checkpoint_with_other_shapes_is_refused(tmp_path, toy):
    state = toy.ToyNet().state_dict()
    state['head.weight'] = torch.zeros(5, 16)
    state['head.bias'] = torch.zeros(5)
    path = tmp_path / 'five_classes.pth'
    torch.save(dict(state_dict=state), path)
    runner = toy.build_runner(
        tmp_path / 'work',
        load_from=str(path),
        custom_hooks=[CheckpointMatchHook()],
    )
    with pytest.raises(
        CheckpointMismatchError, match=r'head.weight \(5, 16\) vs \(2, 16\)'
    ):
        runner.train()


def _per_parameter_groups():
    # With a paramwise_cfg, mmengine makes one parameter group a parameter.
    return dict(
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9),
        paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=0.1)}),
    )


def test_resume_with_other_optimizer_groups_is_refused(
    tmp_path, toy, bn_checkpoint
):
    runner = toy.build_runner(
        tmp_path,
        resume=True,
        load_from=str(bn_checkpoint),
        optim_wrapper=_per_parameter_groups(),
        custom_hooks=[CheckpointMatchHook()],
    )
    with pytest.raises(CheckpointMismatchError) as err:
        runner.train()
    msg = str(err.value)
    assert f'Cannot resume from {bn_checkpoint}' in msg
    num_params = len(list(toy.ToyNet().parameters()))
    assert (
        f'parameter groups of [{num_params}] parameters, the '
        f'optimizer of this config has {[1] * num_params}' in msg
    )
    assert 'load_from instead of --resume' in msg


def test_control_resume_with_other_groups_fails_in_torch(
    tmp_path, toy, bn_checkpoint
):
    runner = toy.build_runner(
        tmp_path,
        resume=True,
        load_from=str(bn_checkpoint),
        optim_wrapper=_per_parameter_groups(),
    )
    with pytest.raises(ValueError, match='parameter group') as err:
        runner.train()
    assert str(bn_checkpoint) not in str(err.value)


def test_resume_of_the_same_config_passes(tmp_path, toy):
    toy.build_runner(
        tmp_path, max_epochs=1, custom_hooks=[CheckpointMatchHook()]
    ).train()
    runner = toy.build_runner(
        tmp_path, resume=True, custom_hooks=[CheckpointMatchHook()]
    )
    runner.train()
    assert runner.epoch == 2
