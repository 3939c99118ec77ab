"""Does a checkpoint fit a model? One comparison for every loader.

mmengine loads ``load_from``, ``resume`` and ``Pretrained`` weights
non-strictly: keys that do not match are skipped with a log line, so a
checkpoint of another model gives a partly random one. The project's loaders
(:class:`~dn_mmdet.engine.hooks.CheckpointMatchHook`, the backbone's
``Pretrained`` init) compare first with :func:`state_dict_mismatch` and
refuse with :func:`format_mismatch`.

Two DN layers of one width have the same keys and shapes whatever their
``mode``, ``eps`` or activation, so a layer also records the options that
change its function in the state dict's metadata
(``state_dict._metadata[<layer name>]['norm_options']``, beside torch's
``version``; see :func:`record_options`), which mmengine's
``save_checkpoint`` and ``load_state_dict`` carry. Recorded options that
differ from the model's are a mismatch too: :func:`state_dict_mismatch`
lists them, and the layer's own load refuses them
(:func:`check_recorded_options`). A checkpoint without the record (written
before it existed, or converted from BN) loads as before.
"""

import os.path as osp
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.runner.checkpoint import CheckpointLoader

from .compat import safe_checkpoint_loading

__all__ = [
    'CheckpointMismatchError',
    'Mismatch',
    'state_dict_mismatch',
    'format_mismatch',
    'OPTIONS_KEY',
    'record_options',
    'check_recorded_options',
]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model (keys, shapes, the options of a
    norm layer) or the optimizer of the run."""


#: How many keys of each kind a message names.
MAX_LISTED = 10


#: The key of the options record in a layer's state-dict metadata.
OPTIONS_KEY = 'norm_options'


class Mismatch(NamedTuple):
    """Keys of the model absent from the checkpoint, keys of the checkpoint
    the model does not have, ``(key, checkpoint shape, model shape)`` of
    tensors whose shapes differ, and ``(layer, option, checkpoint value,
    model value)`` of recorded norm options that differ; each in model /
    file order."""

    missing: List[str]
    unexpected: List[str]
    wrong_shape: List[Tuple[str, tuple, tuple]]
    other_options: List[Tuple[str, str, Any, Any]] = []

    def __bool__(self) -> bool:
        return bool(
            self.missing
            or self.unexpected
            or self.wrong_shape
            or self.other_options
        )


def record_options(
    destination: Mapping, prefix: str, options: Dict[str, Any]
) -> None:
    """Add a layer's ``options`` to the metadata that ``Module.state_dict``
    keeps for it (nothing if ``destination`` keeps none). Call it from the
    layer's ``_save_to_state_dict``.

    Args:
        destination (Mapping): The state dict being written.
        prefix (str): The layer's key prefix, e.g. ``'backbone.stem.dn.'``.
        options (dict): Option name -> plain value (str, int, float).
    """
    metadata = getattr(destination, '_metadata', None)
    if metadata is None:
        return
    metadata.setdefault(prefix[:-1], {})[OPTIONS_KEY] = dict(options)


def _differing_options(recorded: Mapping, options: Mapping) -> list:
    return [
        (name, recorded[name], value)
        for name, value in options.items()
        if name in recorded and recorded[name] != value
    ]


def _listed_options(differ: list) -> str:
    return ', '.join(
        f'{name}={saved!r} (model: {value!r})' for name, saved, value in differ
    )


def check_recorded_options(
    local_metadata: Mapping, prefix: str, options: Dict[str, Any], layer: str
) -> None:
    """Raise if the checkpoint recorded other options for this layer. Call
    it from the layer's ``_load_from_state_dict``.

    Args:
        local_metadata (Mapping): The layer's metadata in the checkpoint.
        prefix (str): The layer's key prefix in the checkpoint.
        options (dict): The loading layer's options.
        layer (str): The loading layer, for the message.

    Raises:
        CheckpointMismatchError: Naming the layer and each option that
            differs, with both values.
    """
    differ = _differing_options(local_metadata.get(OPTIONS_KEY) or {}, options)
    if differ:
        raise CheckpointMismatchError(
            f'Checkpoint layer "{prefix[:-1]}" was saved with '
            f'{_listed_options(differ)}; it does not fit {layer}, which '
            'computes another function with the same weights. Load it into '
            'a model built with the recorded options (norm_cfg), or use a '
            'checkpoint of this model.'
        )


def _options_records(state: Mapping) -> Dict[str, dict]:
    metadata = getattr(state, '_metadata', None) or {}
    return {
        re.sub(r'^module\.', '', layer): meta[OPTIONS_KEY]
        for layer, meta in metadata.items()
        if isinstance(meta, Mapping) and meta.get(OPTIONS_KEY)
    }


def state_dict_mismatch(
    model_state: Mapping, checkpoint_state: Mapping
) -> Mismatch:
    """Compare a checkpoint's state dict with a model's.

    A leading ``module.`` (a checkpoint of a wrapped model) is ignored, as
    mmengine's loader strips it; so are missing ``num_batches_tracked``
    buffers, which torch's BatchNorm fills in for old checkpoints.

    Args:
        model_state (Mapping): ``model.state_dict()``.
        checkpoint_state (Mapping): The checkpoint's ``state_dict``.
    """
    saved_options = _options_records(checkpoint_state)
    other_options = [
        (layer, name, saved, value)
        for layer, options in _options_records(model_state).items()
        for name, saved, value in _differing_options(
            saved_options.get(layer, {}), options
        )
    ]
    checkpoint_state = {
        re.sub(r'^module\.', '', k): v for k, v in checkpoint_state.items()
    }
    missing = [
        k
        for k in model_state
        if k not in checkpoint_state and not k.endswith('num_batches_tracked')
    ]
    unexpected = [k for k in checkpoint_state if k not in model_state]
    wrong_shape = [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in checkpoint_state.items()
        if k in model_state
        and isinstance(v, torch.Tensor)
        and v.shape != model_state[k].shape
    ]
    return Mismatch(missing, unexpected, wrong_shape, other_options)


def _listed(keys: List[str]) -> str:
    shown = ', '.join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return shown + (f', ... (+{more} more)' if more > 0 else '')


def format_mismatch(mismatch: Mismatch) -> str:
    """The mismatching keys, one kind a line, and the fix for a BN
    checkpoint loaded into a model with DN layers."""
    lines = []
    if mismatch.missing:
        lines.append(
            f'  {len(mismatch.missing)} missing from the '
            f'checkpoint: {_listed(mismatch.missing)}'
        )
    if mismatch.unexpected:
        lines.append(
            f'  {len(mismatch.unexpected)} not in the model: '
            f'{_listed(mismatch.unexpected)}'
        )
    if mismatch.wrong_shape:
        shapes = [f'{k} {a} vs {b}' for k, a, b in mismatch.wrong_shape]
        lines.append(
            f'  {len(shapes)} of another shape (checkpoint vs '
            f'model): {_listed(shapes)}'
        )
    if mismatch.other_options:
        shown = [
            f'{layer} {name}={saved!r} (model: {value!r})'
            for layer, name, saved, value in mismatch.other_options
        ]
        lines.append(
            f'  {len(shown)} norm option(s) recorded otherwise in '
            f'the checkpoint: {_listed(shown)}'
        )
    if any('.dn.' in k for k in mismatch.missing) and any(
        '.bn.' in k for k in mismatch.unexpected
    ):
        lines.append(
            "  This looks like a BN model's checkpoint for a model "
            'with DN layers: convert it with '
            'tools/model_converters/bn2dn.py.'
        )
    return '\n'.join(lines)


def load_checkpoint_strict(
    module: nn.Module,
    filename: str,
    prefix: Optional[str] = None,
    map_location: str = 'cpu',
) -> None:
    """Load a checkpoint into ``module``, raising on any mismatch.

    Args:
        module (nn.Module): Model to load into.
        filename (str): Local path or URL (anything mmengine's
            ``CheckpointLoader`` reads).
        prefix (str, optional): Keep only keys starting with ``prefix`` and
            strip it (e.g. ``'backbone.'``). Without a prefix, a leading
            ``'module.'`` (DataParallel) is stripped.
        map_location (str): Device to map tensors to.

    Raises:
        FileNotFoundError: ``filename`` is a local path that does not exist.
        RuntimeError: keys missing from, or not used by, ``module``; or
            nothing matches ``prefix``.
        ValueError: a tensor's shape differs from the module's.
    """
    owner = type(module).__name__
    is_url = '://' in str(filename)
    if not is_url and not osp.isfile(filename):
        raise FileNotFoundError(
            f'{owner}: pretrained checkpoint "{filename}" does not exist'
        )
    with safe_checkpoint_loading():  # mmengine's files, weights-only
        ckpt = CheckpointLoader.load_checkpoint(
            filename, map_location=map_location
        )
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise TypeError(
            f'{owner}: "{filename}" holds no state dict '
            f'(got {type(ckpt).__name__})'
        )
    if prefix:
        state = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix)
        }
        if not state:
            raise RuntimeError(
                f'{owner}: no key of "{filename}" starts with '
                f'prefix "{prefix}"'
            )
    elif all(k.startswith('module.') for k in state):
        state = {k[len('module.') :]: v for k, v in state.items()}

    mismatch = state_dict_mismatch(module.state_dict(), state)
    if mismatch:
        keys = mismatch.missing or mismatch.unexpected
        raise (RuntimeError if keys else ValueError)(
            f'{owner}: checkpoint "{filename}" does not match the model:\n'
            f'{format_mismatch(mismatch)}'
        )
    module.load_state_dict(state, strict=True)
