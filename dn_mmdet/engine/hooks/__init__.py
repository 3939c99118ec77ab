"""Training hooks of dn_mmdet (registered in mmdet's ``HOOKS``)."""

from .checkpoint_after_val_hook import CheckpointAfterValHook
from .checkpoint_match_hook import CheckpointMatchHook, CheckpointMismatchError
from .epoch_seed_hook import EpochSeedHook
from .expected_duration_hook import ExpectedDurationHook
from .fuse_norm_act_hook import FuseNormActHook
from .nonfinite_check_hook import NonFiniteCheckHook, NonFiniteError
from .norm_input_check_hook import NormInputCheckHook
from .safe_checkpoint_loader_hook import SafeCheckpointLoaderHook

__all__ = [
    'CheckpointAfterValHook',
    'CheckpointMatchHook',
    'CheckpointMismatchError',
    'EpochSeedHook',
    'ExpectedDurationHook',
    'FuseNormActHook',
    'NonFiniteCheckHook',
    'NonFiniteError',
    'NormInputCheckHook',
    'SafeCheckpointLoaderHook',
]
