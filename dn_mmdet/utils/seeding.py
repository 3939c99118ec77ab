"""Random seeds that make a resumed training run repeat the original.

mmengine resumes training at an epoch boundary and restores the weights, the
optimiser, the schedulers and the data order (``DefaultSampler`` shuffles with
``seed + epoch``). It does not restore the random state that data augmentation
draws from: the global ``random``/``numpy``/``torch`` generators of the main
process (used when ``num_workers=0``) and those of the data loader workers
(which mmengine's default ``worker_init_fn`` seeds with the same constant at
every epoch). The functions here make that state a pure function of
``(seed, epoch, rank)``, so that an epoch draws the same numbers whether the
run was interrupted before it or not:

* :func:`epoch_seed` derives the seed of an epoch;
* :func:`seed_everything` seeds ``random``, ``numpy`` and ``torch`` with it
  (:class:`~dn_mmdet.engine.hooks.EpochSeedHook` does so before every epoch);
* :func:`seed_worker_from_torch` seeds a worker's ``random`` and ``numpy``
  from its torch seed. torch gives each worker ``base_seed + worker_id``,
  where ``base_seed`` is drawn from the main process's torch generator when
  an epoch's iterator is created, i.e. right after the epoch was seeded.
"""

import random

import numpy as np
import torch
from mmengine.registry import FUNCTIONS

__all__ = ['epoch_seed', 'seed_everything', 'seed_worker_from_torch']


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one process.

    Args:
        seed (int): The run's seed (``runner.seed``).
        epoch (int): 0-based epoch index.
        rank (int): Process rank, so that the processes of a distributed
            run augment differently. Defaults to 0.

    Returns:
        int: A seed in ``[0, 2**32)``, mixed by
        :class:`numpy.random.SeedSequence` so that nearby inputs give
        unrelated streams.
    """
    entropy = [seed % 2**64, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators.

    Args:
        seed (int): A seed in ``[0, 2**32)``.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices


@FUNCTIONS.register_module()
def seed_worker_from_torch(worker_id: int) -> None:
    """``worker_init_fn`` that seeds ``random`` and ``numpy`` per epoch.

    Set it with ``worker_init_fn=dict(type='seed_worker_from_torch')`` in a
    dataloader config (:class:`~dn_mmdet.engine.hooks.EpochSeedHook` installs
    it in place of mmengine's default by itself). Unlike mmengine's
    ``default_worker_init_fn``, which seeds every epoch's workers with the
    same constant, this follows torch's per-iterator worker seed and hence
    the seed of the epoch.

    Args:
        worker_id (int): Index of the worker (already part of torch's seed).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
