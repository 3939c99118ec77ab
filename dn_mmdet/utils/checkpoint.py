"""Does a checkpoint fit a model? One comparison for every loader.

mmengine loads ``load_from``, ``resume`` and ``Pretrained`` weights
non-strictly: keys that do not match are skipped with a log line, so a
checkpoint of another model gives a partly random one. The project's loaders
(:class:`~dn_mmdet.engine.hooks.CheckpointMatchHook`, the backbone's
``Pretrained`` init) compare first with :func:`state_dict_mismatch` and
refuse with :func:`format_mismatch`.
"""
import re
from typing import List, Mapping, NamedTuple, Tuple

import torch

__all__ = ['Mismatch', 'state_dict_mismatch', 'format_mismatch']

#: How many keys of each kind a message names.
MAX_LISTED = 10


class Mismatch(NamedTuple):
    """Keys of the model absent from the checkpoint, keys of the checkpoint
    the model does not have, and ``(key, checkpoint shape, model shape)`` of
    tensors whose shapes differ; each in model / file order."""
    missing: List[str]
    unexpected: List[str]
    wrong_shape: List[Tuple[str, tuple, tuple]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)


def state_dict_mismatch(model_state: Mapping,
                        checkpoint_state: Mapping) -> Mismatch:
    """Compare a checkpoint's state dict with a model's.

    A leading ``module.`` (a checkpoint of a wrapped model) is ignored, as
    mmengine's loader strips it; so are missing ``num_batches_tracked``
    buffers, which torch's BatchNorm fills in for old checkpoints.

    Args:
        model_state (Mapping): ``model.state_dict()``.
        checkpoint_state (Mapping): The checkpoint's ``state_dict``.
    """
    checkpoint_state = {
        re.sub(r'^module\.', '', k): v
        for k, v in checkpoint_state.items()
    }
    missing = [
        k for k in model_state if k not in checkpoint_state
        and not k.endswith('num_batches_tracked')
    ]
    unexpected = [k for k in checkpoint_state if k not in model_state]
    wrong_shape = [(k, tuple(v.shape), tuple(model_state[k].shape))
                   for k, v in checkpoint_state.items()
                   if k in model_state and isinstance(v, torch.Tensor)
                   and v.shape != model_state[k].shape]
    return Mismatch(missing, unexpected, wrong_shape)


def _listed(keys: List[str]) -> str:
    shown = ', '.join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return shown + (f', ... (+{more} more)' if more > 0 else '')


def format_mismatch(mismatch: Mismatch) -> str:
    """The mismatching keys, one kind a line, and the fix for a BN
    checkpoint loaded into a model with DN layers."""
    lines = []
    if mismatch.missing:
        lines.append(f'  {len(mismatch.missing)} missing from the '
                     f'checkpoint: {_listed(mismatch.missing)}')
    if mismatch.unexpected:
        lines.append(f'  {len(mismatch.unexpected)} not in the model: '
                     f'{_listed(mismatch.unexpected)}')
    if mismatch.wrong_shape:
        shapes = [f'{k} {a} vs {b}' for k, a, b in mismatch.wrong_shape]
        lines.append(f'  {len(shapes)} of another shape (checkpoint vs '
                     f'model): {_listed(shapes)}')
    if any('.dn.' in k for k in mismatch.missing) and any(
            '.bn.' in k for k in mismatch.unexpected):
        lines.append('  This looks like a BN model\'s checkpoint for a model '
                     'with DN layers: convert it with '
                     'tools/model_converters/bn2dn.py.')
    return '\n'.join(lines)
