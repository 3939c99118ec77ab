"""Training hooks of dn_mmdet (registered in mmdet's ``HOOKS``)."""
from .epoch_seed_hook import EpochSeedHook
from .nonfinite_hook import NonFiniteCheckHook, NonFiniteError
from .norm_input_check_hook import NormInputCheckHook

__all__ = [
    'EpochSeedHook', 'NonFiniteCheckHook', 'NonFiniteError',
    'NormInputCheckHook'
]
