"""Utilities: checkpoint loading under torch's weights-only unpickler
(:mod:`.compat`), importing torchvision (and so mmpretrain) beside a CPU torch
(:mod:`.torchvision_compat`), atomic checkpoint writes
(:mod:`.atomic_backend`), seeding
for exact resumption (:mod:`.seeding`) and the launch helpers of ``tools/``
(:mod:`.launch`)."""
from . import compat  # noqa: F401  (first: registers the allow-list)
from . import torchvision_compat  # noqa: F401  (before mmpretrain is imported)
from .atomic_backend import AtomicLocalBackend, atomic_write
from .seeding import epoch_seed, seed_everything, seed_worker_from_torch

__all__ = [
    'AtomicLocalBackend', 'atomic_write', 'epoch_seed', 'seed_everything',
    'seed_worker_from_torch'
]
