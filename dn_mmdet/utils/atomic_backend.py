"""A local file backend whose writes are atomic.

mmengine's ``CheckpointHook`` serialises a checkpoint into memory and hands the
bytes to a file backend's ``put``. ``LocalBackend.put`` opens the destination
with ``'wb'`` and writes in place: a process killed (or a disk that fills up)
during the write leaves a truncated checkpoint under the final name.
:class:`AtomicLocalBackend` writes to a temporary file in the destination's
directory, flushes and ``fsync``\\ s it, and renames it over the destination
with :func:`os.replace` (atomic on POSIX within one file system). A reader
sees either the old file or the complete new one; an interrupted write leaves
the destination untouched.

Use it with ``backend_args=dict(backend='atomic_local')`` wherever mmengine
takes ``backend_args`` (``default_runtime.py`` sets it for checkpoints).
"""

import contextlib
import os
import os.path as osp
import re
import uuid
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.utils import mkdir_or_exist

__all__ = ['AtomicLocalBackend', 'atomic_write']

# ``.<name>.<pid>.<random>.tmp``: hidden, so no checkpoint lookup picks it up.
_TEMP_NAME = re.compile(r'^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$')


def _temp_path(filepath: str) -> str:
    dirname, basename = osp.split(filepath)
    return osp.join(
        dirname, f'.{basename}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(filepath: str) -> None:
    """Delete temp files a killed writer of ``filepath`` left behind."""
    dirname, basename = osp.split(filepath)
    for entry in os.scandir(dirname):
        match = _TEMP_NAME.match(entry.name)
        if (
            match
            and match['name'] == basename
            and not _pid_alive(int(match['pid']))
        ):
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)


def _fsync_dir(dirname: str) -> None:
    """Make a rename in ``dirname`` durable (no-op where unsupported)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(filepath: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``filepath`` so that it is all there or not at all.

    Args:
        filepath (str | Path): Destination. Its directory is created if
            missing. If it is a symlink, the link itself is replaced.
        data (bytes): The complete new content.
    """
    filepath = osp.abspath(os.fspath(filepath))
    dirname = osp.dirname(filepath)
    mkdir_or_exist(dirname)
    _remove_stale_temps(filepath)
    tmp = _temp_path(filepath)
    # 0o666 & ~umask, like open(); tempfile.mkstemp would force 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(dirname)


# force=True: re-importing the module must not fail on the second registration.
@register_backend('atomic_local', force=True)
class AtomicLocalBackend(LocalBackend):
    """:class:`mmengine.fileio.LocalBackend` with atomic ``put``/``put_text``.

    Reads, listing and removal are inherited unchanged.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write bytes to ``filepath`` atomically (see :func:`atomic_write`).

        Args:
            obj (bytes): Data to be written.
            filepath (str | Path): Path to write data to.
        """
        atomic_write(filepath, obj)

    def put_text(
        self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8'
    ) -> None:
        """Write text to ``filepath`` atomically (see :func:`atomic_write`).

        Args:
            obj (str): Text to be written.
            filepath (str | Path): Path to write text to.
            encoding (str): Text encoding. Defaults to 'utf-8'.
        """
        atomic_write(filepath, obj.encode(encoding))
