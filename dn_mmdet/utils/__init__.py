"""Utilities: checkpoint loading under torch's weights-only unpickler with
errors that name the file (:mod:`.compat`), the comparison of a checkpoint
with a model (:mod:`.checkpoint`), atomic checkpoint writes
(:mod:`.atomic_backend`), seeding for exact resumption (:mod:`.seeding`) and
the launch helpers of ``tools/`` (:mod:`.launch`)."""
from . import compat  # noqa: F401  (first: registers the allow-list)
from .atomic_backend import AtomicLocalBackend, atomic_write
from .seeding import epoch_seed, seed_everything, seed_worker_from_torch

__all__ = [
    'AtomicLocalBackend', 'atomic_write', 'epoch_seed', 'seed_everything',
    'seed_worker_from_torch'
]
