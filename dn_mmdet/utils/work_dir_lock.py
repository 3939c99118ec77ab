"""One training run per work dir.

Two runs writing one work dir overwrite each other's ``epoch_N.pth`` and
interleave their logs and ``scalars.json``, and both exit 0.
:class:`WorkDirLock` makes the second stop at once instead, naming the work
dir and the process that holds it.

The lock is an exclusive ``flock`` on ``<work_dir>/.dn_mmdet_train.lock``,
which also holds the owner's pid for the message. The kernel releases a
``flock`` when its process ends, however it ends (SIGKILL included), so the
lock file of a dead run is simply taken over; the file is never deleted (an
unlink would let a third run lock a new file while a second still holds the
old one).
"""

import fcntl
import os
import os.path as osp
from typing import Optional

__all__ = ['WorkDirLock', 'WorkDirInUseError', 'LOCK_NAME']

#: The lock file's name in the work dir.
LOCK_NAME = '.dn_mmdet_train.lock'


class WorkDirInUseError(RuntimeError):
    """Another live process trains in the work dir."""


class WorkDirLock:
    """Hold ``work_dir`` for this process (a context manager).

    Args:
        work_dir (str): The run's work dir; created if missing.

    Raises:
        WorkDirInUseError: On entering, if another process holds the lock;
            the message names the work dir and that process's pid.
    """

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.work_dir!r})'

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkDirInUseError`."""
        if self._fd is not None:
            return
        os.makedirs(self.work_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f'process {owner}' if owner else 'another process'
            raise WorkDirInUseError(
                f'work dir {self.work_dir} is in use by {who} (lock file '
                f'{self.path}): two runs in one work dir overwrite each '
                "other's checkpoints and logs. Wait for that run to end, "
                'stop it, or pass another --work-dir.'
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays, emptied)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    text = os.pread(fd, 32, 0).decode(errors='replace').strip()
    return int(text) if text.isdigit() else None
