"""Utilities: checkpoint loading under torch's weights-only unpickler with
errors that name the file (:mod:`.compat`), the comparison of a checkpoint
with a model (:mod:`.checkpoint`), atomic checkpoint writes
(:mod:`.atomic_backend`), seeding for exact resumption (:mod:`.seeding`),
one run per work dir (:mod:`.work_dir_lock`), the run configs of the tools
(:mod:`.run_config`), the launch helpers of ``tools/`` (:mod:`.launch`) and
their distributed runs (:mod:`.distributed`). Importing them changes
nothing in the process: what the tools need is switched on by explicit calls
(:func:`safe_checkpoint_loading`)."""

from .atomic_backend import AtomicLocalBackend, atomic_write
from .compat import load_from_local, safe_checkpoint_loading
from .seeding import epoch_seed, seed_everything, seed_worker_from_torch

__all__ = [
    'AtomicLocalBackend',
    'atomic_write',
    'epoch_seed',
    'load_from_local',
    'safe_checkpoint_loading',
    'seed_everything',
    'seed_worker_from_torch',
]
