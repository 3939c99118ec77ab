"""Per-epoch seeding: resumed runs repeat uninterrupted ones exactly."""

import random
from functools import partial

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from torch.utils.data import DataLoader, Dataset

from dn_mmdet.utils.seeding import (
    epoch_seed,
    seed_everything,
    seed_worker_from_torch,
)


def test_epoch_seed_is_a_pure_function_of_its_inputs():
    seeds = {
        epoch_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (0, 1)
    }
    assert len(seeds) == 12
    assert epoch_seed(7, 3, 1) == epoch_seed(7, 3, 1)
    assert all(0 <= s < 2**32 for s in seeds)
    assert 0 <= epoch_seed(-5, 0) < 2**32


def test_seed_everything_seeds_all_three_generators():
    draws = []
    for _ in range(2):
        seed_everything(123)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]


class _Draws(Dataset):
    """Returns the worker's random draws, as an augmentation would make."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([random.random(), np.random.rand()])


def _epoch_draws(worker_init_fn, epoch_seeds):
    loader = DataLoader(
        _Draws(), batch_size=2, num_workers=2, worker_init_fn=worker_init_fn
    )
    out = []
    for seed in epoch_seeds:
        torch.manual_seed(seed)  # what EpochSeedHook does before an epoch
        out.append(torch.cat(list(loader)))
    return out


def test_worker_seed_follows_the_epoch_seed():
    first, second, first_again = _epoch_draws(
        seed_worker_from_torch, [10, 11, 10]
    )
    assert torch.equal(first, first_again)
    assert not torch.equal(first, second)


def test_mmengine_default_worker_seed_repeats_every_epoch():
    """Why seed_worker_from_torch replaces mmengine's worker_init_fn: the
    default draws the same augmentation numbers in every epoch."""
    from mmengine.dataset import worker_init_fn

    fn = partial(worker_init_fn, num_workers=2, rank=0, seed=0)
    first, second = _epoch_draws(fn, [10, 11])
    assert torch.equal(first, second)


class _Interrupt(Exception):
    pass


class _InterruptAfterEpoch(Hook):
    """Stops training right after epoch ``n``'s checkpoint is written."""

    priority = 'LOWEST'

    def __init__(self, n):
        self.n = n

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.n:
            raise _Interrupt


def _interrupted_then_resumed(toy, work_dir, **kwargs):
    runner = toy.build_runner(
        work_dir, custom_hooks=[_InterruptAfterEpoch(1)], **kwargs
    )
    with pytest.raises(_Interrupt):
        runner.train()
    runner = toy.build_runner(work_dir, resume=True, **kwargs)
    runner.train()
    return runner.model.state_dict()


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resumed_run_equals_uninterrupted_run(tmp_path, toy, num_workers):
    reference = toy.build_runner(tmp_path / 'ref', num_workers=num_workers)
    reference.train()
    resumed = _interrupted_then_resumed(
        toy, tmp_path / 'resumed', num_workers=num_workers
    )
    assert _same(resumed, reference.model.state_dict())


def test_without_the_hook_resume_is_not_exact(tmp_path, toy):
    """Control: without EpochSeedHook (num_workers=0, augmentation in the
    main process) the resumed run differs, so the test above can fail."""
    reference = toy.build_runner(tmp_path / 'ref', epoch_seed_hook=False)
    reference.train()
    resumed = _interrupted_then_resumed(
        toy, tmp_path / 'resumed', epoch_seed_hook=False
    )
    assert not _same(resumed, reference.model.state_dict())


def test_hook_installs_worker_seed_and_warns_on_persistent_workers(
    tmp_path, toy
):
    runner = toy.build_runner(
        tmp_path, max_epochs=1, num_workers=1, persistent_workers=True
    )
    runner.train()
    assert (
        runner.train_loop.dataloader.worker_init_fn is seed_worker_from_torch
    )
    log = tmp_path / runner.timestamp / f'{runner.timestamp}.log'
    assert 'persistent_workers=True' in log.read_text()
