"""Reseed before every training epoch so that resumed runs are exact."""

import logging
from functools import partial

from mmdet.registry import HOOKS
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.hooks import Hook
from mmengine.logging import print_log

from dn_mmdet.utils.seeding import (
    epoch_seed,
    seed_everything,
    seed_worker_from_torch,
)


def _func_of(fn):
    while isinstance(fn, partial):
        fn = fn.func
    return fn


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Make each training epoch's randomness a function of (seed, epoch, rank).

    mmengine resumes at epoch boundaries but does not restore the random
    generators that data augmentation uses, so a run that was killed and
    resumed augments differently from an uninterrupted one. Before every
    training epoch this hook seeds ``random``, ``numpy`` and ``torch`` with
    :func:`~dn_mmdet.utils.seeding.epoch_seed` of ``runner.seed`` (which
    mmengine restores from the checkpoint), the epoch and the rank. With
    ``randomness=dict(seed=..., deterministic=True)`` an interrupted and
    resumed run then ends with the same weights as an uninterrupted one.

    At the start of training it also replaces mmengine's default
    ``worker_init_fn`` (a constant seed for every epoch) by
    :func:`~dn_mmdet.utils.seeding.seed_worker_from_torch`, whose workers
    follow the epoch's torch seed. A ``worker_init_fn`` set in the config is
    kept.

    Persistent workers (``persistent_workers=True`` with ``num_workers > 0``)
    are seeded once, at the first epoch a process runs, and keep their random
    state across epochs; a resumed run cannot reproduce that state, so the
    hook warns that resuming will not be exact.

    It is meant for ``EpochBasedTrainLoop``: ``IterBasedTrainLoop`` resumes in
    the middle of its single epoch, which a per-epoch seed cannot reproduce.

    Args:
        priority: Hook priority. 'VERY_LOW' (default) seeds after the other
            ``before_train_epoch`` hooks, right before the epoch's data loader
            iterator (and its workers' seeds) is created.
    """

    def __init__(self, priority='VERY_LOW'):
        self.priority = priority

    def before_train(self, runner) -> None:
        """Install the per-epoch ``worker_init_fn``; warn if exactness is lost.

        Args:
            runner (Runner): The runner of the training process.
        """
        loader = runner.train_loop.dataloader
        if _func_of(loader.worker_init_fn) is mmengine_worker_init_fn:
            loader.worker_init_fn = seed_worker_from_torch
        if loader.num_workers > 0 and loader.persistent_workers:
            print_log(
                'EpochSeedHook: train_dataloader.persistent_workers=True '
                'keeps the data workers, and their random state, across '
                'epochs; a resumed run cannot restore that state and will '
                'augment differently. Set '
                'train_dataloader.persistent_workers=False for bit-exact '
                'resumption.',
                logger='current',
                level=logging.WARNING,
            )

    def before_train_epoch(self, runner) -> None:
        """Seed ``random``/``numpy``/``torch`` for the coming epoch.

        Args:
            runner (Runner): The runner of the training process.
        """
        seed_everything(epoch_seed(runner.seed, runner.epoch, runner.rank))
