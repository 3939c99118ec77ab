"""Load mmengine checkpoints under torch's weights-only unpickler.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: the pickle
in a checkpoint may only reference globals on an allow-list, so a file cannot
run code when it is loaded. mmengine 0.10.7 calls ``torch.load(filename,
map_location=...)`` without ``weights_only`` (``load_from_local`` and friends
in :mod:`mmengine.runner.checkpoint`), so torch's default applies, and the
checkpoints its runner writes fail it: besides tensors and plain containers
they hold the message hub's ``HistoryBuffer`` log buffers (numpy arrays) and
numpy scalars in ``meta`` and ``message_hub`` (metric values, ``best_score``).

This module keeps weights-only loading in force and extends the allow-list
with exactly the globals those checkpoints reference (found by saving real
runner checkpoints and listing their globals, see ``tests/test_utils``):

``mmengine.logging.history_buffer.HistoryBuffer``
    Created with ``cls.__new__(cls)`` (no ``__init__`` runs), then restored by
    its ``__setstate__``, which only stores the pickled attributes and merges
    the pickled statistics methods into the class table. Those methods are
    functions of the class itself, pickled as ``getattr(HistoryBuffer, name)``;
    the next entry limits them to the four built-in ones, so a crafted file
    can at worst put plain data in that table (breaking log statistics), not
    make anything run.
``builtins.getattr`` -> :func:`_history_buffer_getattr`
    Not the real ``getattr`` (that would let a file fetch any attribute of any
    allowed object): the name is mapped to a function that returns only the
    four built-in statistics methods of ``HistoryBuffer`` (``min``, ``max``,
    ``current``, ``mean``) and refuses anything else.
``numpy.ndarray``, ``numpy._core.multiarray._reconstruct``
    ``ndarray.__reduce__`` rebuilds an empty array of the pickled shape and
    dtype and fills it from the pickled raw bytes (``__setstate__``). Arrays
    of objects, strings or complex numbers stay refused: their dtype classes
    are not listed.
``numpy.dtype`` and the concrete dtype classes (``numpy.dtypes.BoolDType``,
``Int8DType`` ... ``UInt64DType``, ``Float16DType`` ... ``Float64DType``)
    ``numpy.dtype('f8', False, True)`` parses a type string; the unpickler then
    calls ``__setstate__`` on the instance, which torch only permits if the
    instance's class (``Float64DType`` etc.) is allowed too. Only the boolean,
    integer and floating dtypes are listed (the ones log values and metrics
    take); they are plain value types with no code behind them.
``numpy._core.multiarray.scalar``
    Rebuilds a numpy scalar (``np.float64(0.5)``) from its dtype and raw bytes.

numpy < 2 pickles the two ``numpy._core.multiarray`` functions under the old
module name ``numpy.core.multiarray``; the same functions are registered under
that name too, so checkpoints written with numpy 1.x load as well.

Everything else (``os.system``, ``builtins.eval``, any class not listed) is
still refused by torch.

Nothing here changes the process on import. :func:`load_from_local` allows
:data:`SAFE_GLOBALS` only while it loads (``torch.serialization.
safe_globals``), and restores ``HistoryBuffer``'s class-wide table of
statistics methods afterwards: ``HistoryBuffer.__setstate__`` merges the
table a file carries into it, so a crafted file of allowed globals could
otherwise map ``'max'`` to ``min`` for every buffer of the process. It
reports a refused file by name together with the globals that were not
allowed, and an empty, truncated or foreign file by name with what to do
(torch says only ``EOFError`` or "PytorchStreamReader failed reading zip
archive"). :func:`safe_checkpoint_loading` makes mmengine's loader of plain
paths (``load_from``, ``resume``, ``Pretrained``, ``tools/test.py``) use it
for the duration of a ``with`` block; the tools wrap their run in it and
:class:`~dn_mmdet.engine.hooks.SafeCheckpointLoaderHook` does the same for
a runner built from the project's configs.
"""

import contextlib
import glob
import os.path as osp
import pickle
import zipfile
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'SAFE_GLOBALS',
    'safe_global_names',
    'load_from_local',
    'safe_checkpoint_loading',
    'CheckpointReadError',
]


class CheckpointReadError(RuntimeError):
    """A checkpoint file is empty, truncated or not a checkpoint."""


_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` in weights-only unpickling.

    mmengine checkpoints pickle ``HistoryBuffer``'s statistics methods as
    ``getattr(HistoryBuffer, 'mean')``. Only that use is served.

    Args:
        obj: The object the pickle asks an attribute of.
        name (str): The attribute name.

    Returns:
        Callable: ``getattr(HistoryBuffer, name)`` for a built-in statistics
        method name.

    Raises:
        pickle.UnpicklingError: For any other object or name.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed when loading a '
        'checkpoint: only the statistics methods '
        f'{_HISTORY_BUFFER_METHODS} of HistoryBuffer may be referenced.'
    )


# Boolean, signed/unsigned integer and floating numpy dtypes, by type code
# ('l' and 'q' are distinct classes on some platforms, so both are listed).
_NUMPY_DTYPE_CODES = '?bhilqBHILQefd'

_ENTRY = Union[Callable, Tuple[Callable, str]]


def _numpy_entries() -> List[_ENTRY]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray
    reconstruct, scalar = multiarray._reconstruct, multiarray.scalar
    entries: List[_ENTRY] = [np.ndarray, np.dtype]
    dtype_classes = {type(np.dtype(code)) for code in _NUMPY_DTYPE_CODES}
    # numpy < 1.25 has no per-dtype classes: type(dtype) is np.dtype itself.
    entries += sorted(dtype_classes - {np.dtype}, key=lambda c: c.__name__)
    # Under both the numpy >= 2 and the numpy 1.x module name.
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        entries += [
            (reconstruct, f'{module}._reconstruct'),
            (scalar, f'{module}.scalar'),
        ]
    return entries


#: The globals added to torch's weights-only allow-list (see module doc).
SAFE_GLOBALS: Tuple[_ENTRY, ...] = tuple(
    [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')]
    + _numpy_entries()
)


def _entry_name(entry: _ENTRY) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def safe_global_names() -> List[str]:
    """Names (``module.qualname``) of the globals this module allows."""
    return sorted(_entry_name(entry) for entry in SAFE_GLOBALS)


@contextlib.contextmanager
def _unpickling_allowed_globals() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in the block; leave the class-wide state
    the allowed globals' unpickling touches as it was before."""
    statistics = HistoryBuffer._statistics_methods
    saved = dict(statistics)
    # Only what is not allowed yet: leaving the block removes what it added,
    # and a global the user allowed process-wide must stay allowed.
    allowed = set(torch.serialization.get_safe_globals())
    missing = [entry for entry in SAFE_GLOBALS if entry not in allowed]
    try:
        with torch.serialization.safe_globals(missing):
            yield
    finally:
        # Whatever a file put there (HistoryBuffer.__setstate__ merges its
        # pickled table into the class's), the process keeps its own, with
        # the built-in methods every HistoryBuffer's __init__ or
        # __setstate__ registers: a process that loads buffers before it
        # makes one has them only from here.
        statistics.clear()
        statistics.update(saved)
        for name in _HISTORY_BUFFER_METHODS:
            statistics.setdefault(name, getattr(HistoryBuffer, name))


def _disallowed_globals(filename: str) -> List[str]:
    """Globals of a checkpoint that the allow-list refuses (static scan)."""
    try:
        return sorted(
            torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        )
    except Exception:  # legacy (non-zip) format: no static scan available
        return []


def _unpickler_reason(err: Exception) -> str:
    """The unpickler's own message, without torch's generic advice."""
    text = str(err)
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1]
        text = text.split('Check the documentation of torch.load', 1)[0]
    return ' '.join(text.split()).rstrip('.')


def _unreadable_reason(filename: str, err: Exception) -> Optional[str]:
    """Why torch cannot read ``filename`` if the file itself is broken
    (empty, truncated, not a checkpoint), else None."""
    size = osp.getsize(filename)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(4)
    if head == b'PK\x03\x04':  # torch's zip format
        try:
            with zipfile.ZipFile(filename) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            return (
                f'the file ({size} bytes) is truncated or corrupt (an '
                'incomplete zip archive)'
            )
        if broken is not None:
            return (
                f'the file ({size} bytes) is corrupt (its record '
                f'{broken} fails its checksum)'
            )
        return None
    if not head.startswith(b'\x80'):  # nor a pickle (the legacy format)
        return f'the file ({size} bytes) is not a PyTorch checkpoint'
    if isinstance(err, EOFError):
        return f'the file ({size} bytes) is truncated'
    return None


def _other_checkpoints(filename: str) -> List[str]:
    folder = osp.dirname(osp.abspath(filename))
    return sorted(
        (
            p
            for p in glob.glob(osp.join(folder, '*.pth'))
            if not osp.samefile(p, filename)
        ),
        key=osp.getmtime,
        reverse=True,
    )


def load_from_local(filename: str, map_location=None) -> Any:
    """Load a local checkpoint with torch's default (weights-only) unpickler.

    :data:`SAFE_GLOBALS` are allowed during the load only, and the load
    changes nothing outside the returned object (see the module doc).
    Within :func:`safe_checkpoint_loading`, mmengine's loader of plain paths
    is this function, so ``load_from``, ``resume``, ``Pretrained`` init and
    ``tools/test.py`` use it. Unlike mmengine's own, it names the file when
    torch refuses a global or cannot read the file (empty, truncated, not a
    checkpoint), and says what to do.

    Args:
        filename (str): Path of the checkpoint.
        map_location: As in :func:`torch.load`.

    Returns:
        The unpickled checkpoint (usually a dict).

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
        pickle.UnpicklingError: If the checkpoint references a global that
            is not allowed. Nothing from the file has been run.
        CheckpointReadError: If the file is empty, truncated or not a
            checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file {filename} does not exist.')
    try:
        with _unpickling_allowed_globals():
            return torch.load(filename, map_location=map_location)
    except Exception as err:
        broken = _unreadable_reason(filename, err)
        if broken is not None:
            others = [osp.basename(p) for p in _other_checkpoints(filename)]
            hint = (
                ' Other checkpoints in its folder, newest first: '
                f'{", ".join(others[:5])}.'
                if others
                else ''
            )
            detail = str(err).split('. ')[0]  # not torch's generic advice
            torch_says = type(err).__name__ + (f': {detail}' if detail else '')
            raise CheckpointReadError(
                f'Cannot read checkpoint {filename}: {broken} '
                f'({torch_says}). If it was cut short '
                'while being written or copied, copy or download it again; '
                'or use another checkpoint (--resume PATH, load_from=PATH).'
                f'{hint}'
            ) from err
        if not isinstance(err, pickle.UnpicklingError):
            raise  # a readable file: e.g. a bad map_location
        with _unpickling_allowed_globals():  # list only what stays refused
            disallowed = _disallowed_globals(filename)
        reason = (
            f'it references globals that are not allowed: {disallowed}'
            if disallowed
            else _unpickler_reason(err)
        )
        raise pickle.UnpicklingError(
            f'Refusing to load checkpoint {filename}: {reason}. Checkpoints '
            "are loaded with torch's weights-only unpickler, which permits "
            'tensors, plain containers and the types listed in '
            'dn_mmdet.utils.compat.SAFE_GLOBALS. If you trust this file and '
            'the globals are plain data types, add them with '
            'torch.serialization.add_safe_globals.'
        ) from None


class safe_checkpoint_loading:  # noqa: N801  (used as a function)
    """Make mmengine load plain checkpoint paths with
    :func:`load_from_local` inside the block.

    mmengine's own loader calls ``torch.load`` without allowing the globals
    its runner's checkpoints reference, so under torch's weights-only
    default it cannot resume them. The previous loader of plain paths is
    put back on exit (blocks nest). A plain object rather than a generator:
    one that is entered and never exited (a run that stopped with an error)
    puts nothing back when it is garbage-collected, long after other blocks
    have restored the table.

    Example::

        from dn_mmdet.utils import safe_checkpoint_loading
        with safe_checkpoint_loading():
            runner.train()
    """

    def __init__(self) -> None:
        self._previous: Optional[Callable] = None

    def __enter__(self) -> None:
        self._previous = CheckpointLoader._schemes.get('')
        # Plain paths (prefix ''), the scheme of mmengine's load_from_local.
        CheckpointLoader.register_scheme(
            prefixes='', loader=load_from_local, force=True
        )

    def __exit__(self, *exc_info) -> None:
        # register_scheme rebuilds the table, so look it up again.
        if self._previous is None:
            CheckpointLoader._schemes.pop('', None)
        else:
            CheckpointLoader._schemes[''] = self._previous
