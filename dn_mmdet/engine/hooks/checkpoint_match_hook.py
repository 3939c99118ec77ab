"""Refuse a checkpoint that does not fit the model, before it is loaded."""

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper
from mmengine.runner import find_latest_checkpoint

from dn_mmdet.utils.checkpoint import (
    CheckpointMismatchError,
    format_mismatch,
    state_dict_mismatch,
)

from .utils import unwrap_model

PARTIAL_SWITCH = 'default_hooks.checkpoint_match.allow_partial=True'

__all__ = ['CheckpointMatchHook', 'CheckpointMismatchError']


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Raise when ``load_from``, ``resume`` or ``tools/test.py`` would load a
    checkpoint into a model it was not written for.

    mmengine loads these checkpoints non-strictly: weights whose keys or
    shapes differ are skipped with a log line, so a checkpoint of another
    model (a BN detector's for the DN config, say) trains or evaluates a
    partly random model. This hook compares the checkpoint's state dict with
    the model's before anything is loaded (``after_load_checkpoint`` runs
    between reading and loading) and raises
    :class:`CheckpointMismatchError` listing the mismatching keys. On resume
    it also checks that the optimizer state has the parameter groups of this
    run's optimizer (torch would fail later with a bare ``ValueError``).

    Args:
        allow_partial (bool): Load what matches and skip the rest (mmengine's
            behaviour), e.g. to fine-tune on data with other classes. Set it
            with ``--cfg-options default_hooks.checkpoint_match.
            allow_partial=True``. Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_partial: bool = False) -> None:
        self.allow_partial = allow_partial

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # What Runner.load_or_resume loads (``_resume`` / ``_load_from`` are
        # read by mmengine's own EMAHook too): load_from, else the latest
        # checkpoint of the work dir.
        source = runner._load_from or find_latest_checkpoint(runner.work_dir)
        if not self.allow_partial:
            state = checkpoint.get('state_dict', checkpoint)
            mismatch = state_dict_mismatch(
                unwrap_model(runner.model).state_dict(), state
            )
            if mismatch:
                raise CheckpointMismatchError(
                    f'Checkpoint {source} does not fit the model of this '
                    f'config; nothing was loaded.\n{format_mismatch(mismatch)}'
                    '\n  To load only the matching weights on purpose, set '
                    f'{PARTIAL_SWITCH}.'
                )
        if (
            runner._resume
            and 'optimizer' in checkpoint
            and isinstance(runner.optim_wrapper, OptimWrapper)
        ):
            self._check_optimizer(runner.optim_wrapper, checkpoint, source)

    @staticmethod
    def _check_optimizer(optim_wrapper, checkpoint: dict, source) -> None:
        saved = [
            len(group['params'])
            for group in checkpoint['optimizer'].get('param_groups', [])
        ]
        current = [
            len(group['params'])
            for group in optim_wrapper.optimizer.param_groups
        ]
        if saved != current:
            raise CheckpointMismatchError(
                f'Cannot resume from {source}: its optimizer state has '
                f'parameter groups of {saved} parameters, the optimizer of '
                f'this config has {current}. It was written by another '
                'config (another model or optim_wrapper.paramwise_cfg): '
                'resume with that config, or start from its weights with '
                'load_from instead of --resume.'
            )
