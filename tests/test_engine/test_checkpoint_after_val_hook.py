"""CheckpointAfterValHook: a run stopped between an epoch's checkpoint and
its validation still validates the epoch when resumed."""

import itertools

import pytest
import torch
from mmengine.hooks import Hook

from dn_mmdet.utils.compat import load_from_local


class _Stop(Exception):
    pass


class _StopBeforeValidating(Hook):
    """Stops the run where a kill would: epoch ``n`` trained, its
    validation not begun."""

    priority = 'HIGHEST'

    def __init__(self, n):
        self.n = n

    def before_val_epoch(self, runner):
        if runner.epoch == self.n:
            raise _Stop


class _Validations(Hook):
    """Records (epoch, metrics) of every validation."""

    def __init__(self):
        self.seen = []

    def after_val_epoch(self, runner, metrics=None):
        self.seen.append((runner.epoch, dict(metrics)))


def _checkpoint(kind, max_keep_ckpts=2):
    return dict(
        type=kind,
        interval=1,
        max_keep_ckpts=max_keep_ckpts,
        save_best='xent',
        rule='less',
        backend_args=dict(backend='atomic_local'),
    )


def _stopped_then_resumed(toy, work_dir, kind, max_epochs=2):
    """Validations of a run stopped before validating its last epoch and
    then resumed."""
    stopped = toy.build_runner(
        work_dir,
        max_epochs=max_epochs,
        validate=True,
        checkpoint=_checkpoint(kind),
        custom_hooks=[_StopBeforeValidating(max_epochs)],
    )
    with pytest.raises(_Stop):
        stopped.train()
    record = _Validations()
    resumed = toy.build_runner(
        work_dir,
        max_epochs=max_epochs,
        validate=True,
        checkpoint=_checkpoint(kind),
        custom_hooks=[record],
        resume=True,
    )
    resumed.train()
    return record.seen, resumed


def test_resumed_run_validates_the_epoch_the_stop_skipped(tmp_path, toy):
    record = _Validations()
    reference = toy.build_runner(
        tmp_path / 'ref',
        validate=True,
        checkpoint=_checkpoint('CheckpointAfterValHook'),
        custom_hooks=[record],
    )
    reference.train()
    seen, resumed = _stopped_then_resumed(
        toy, tmp_path / 'resumed', 'CheckpointAfterValHook'
    )
    # Epoch 2 trained again and validated, with the uninterrupted run's
    # metric (and weights).
    assert seen == record.seen[-1:]
    assert seen[0][0] == 2
    ref_state = reference.model.state_dict()
    assert all(
        torch.equal(v, ref_state[k])
        for k, v in resumed.model.state_dict().items()
    )


def test_control_mmengine_checkpoint_hook_skips_that_validation(tmp_path, toy):
    """Control: with mmengine's CheckpointHook the epoch was saved before
    the stop, the resumed run starts past it and validates nothing."""
    seen, _ = _stopped_then_resumed(toy, tmp_path, 'CheckpointHook')
    assert seen == []


# The last: from epoch 1 on, the loop validates every 3rd epoch, a change it
# makes only after epoch 1 has trained (so the hook expects a validation at
# epoch 1 that does not come, and saves the epoch before epoch 2 instead).
INTERVALS = [
    dict(val_interval=1),
    dict(val_interval=2),
    dict(val_interval=1, dynamic_intervals=[(1, 3)]),
]


@pytest.mark.parametrize(
    'intervals', INTERVALS, ids=['every', 'every-2nd', 'dynamic']
)
def test_checkpoints_are_those_of_checkpoint_hook(tmp_path, toy, intervals):
    """Same files, ``last_checkpoint``, ``meta`` and kept checkpoints as
    CheckpointHook (with two kept: the oldest deleted; with three: every
    epoch's), epochs with and without validation."""
    runs = {}
    for kind, keep in itertools.product(
        ('CheckpointHook', 'CheckpointAfterValHook'), (2, 3)
    ):
        work_dir = tmp_path / f'{kind}_{keep}'
        toy.build_runner(
            work_dir,
            max_epochs=3,
            validate=True,
            checkpoint=_checkpoint(kind, keep),
            train_cfg=dict(by_epoch=True, max_epochs=3, **intervals),
        ).train()
        files = sorted(p.name for p in work_dir.glob('*.pth'))
        metas = {
            name: load_from_local(str(work_dir / name))['meta']
            for name in files
        }
        last = (work_dir / 'last_checkpoint').read_text()
        runs[kind, keep] = (
            files,
            {n: (m['epoch'], m['iter']) for n, m in metas.items()},
            last.replace(str(work_dir), ''),
        )
    for keep in (2, 3):
        assert (
            runs['CheckpointAfterValHook', keep]
            == runs['CheckpointHook', keep]
        )
    files, metas, last = runs['CheckpointHook', 2]
    assert 'epoch_3.pth' in files and 'epoch_1.pth' not in files
    assert metas['epoch_3.pth'] == (3, 6)
    assert last.endswith('epoch_3.pth')
    files = runs['CheckpointHook', 3][0]
    assert {'epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth'} <= set(files)


def test_a_resumed_checkpoint_of_a_validated_epoch_continues(tmp_path, toy):
    """A checkpoint written after validation resumes at the next epoch."""
    toy.build_runner(
        tmp_path,
        max_epochs=2,
        validate=True,
        checkpoint=_checkpoint('CheckpointAfterValHook'),
    ).train()
    record = _Validations()
    toy.build_runner(
        tmp_path,
        max_epochs=3,
        validate=True,
        checkpoint=_checkpoint('CheckpointAfterValHook'),
        custom_hooks=[record],
        resume=True,
        train_cfg=dict(by_epoch=True, max_epochs=3),
    ).train()
    assert [epoch for epoch, _ in record.seen] == [3]
