"""One training run per work dir: a second tools/train.py on a work dir in
use stops at once, naming the work dir and the other run's pid; the lock of
a dead run is taken over."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from dn_mmdet.utils.work_dir_lock import (
    LOCK_NAME,
    WorkDirInUseError,
    WorkDirLock,
)

CONFIG = REPO / 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'


def _train_argv(work_dir, options):
    return [
        sys.executable,
        str(REPO / 'tools/train.py'),
        str(CONFIG),
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        *options,
    ]


def _wait_for_lock_of(pid, lock_file, proc, log, timeout=240):
    """Wait until ``proc`` holds the lock and has written its log folder
    (its runner is built)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                'the first run ended early:\n'
                + Path(log.name).read_text()[-3000:]
            )
        if (
            lock_file.is_file()
            and lock_file.read_text().strip() == str(pid)
            and any(p.is_dir() for p in lock_file.parent.iterdir())
        ):
            return
        time.sleep(0.2)
    pytest.fail(f'the first run never took {lock_file} and began its log')


@pytest.mark.slow
def test_second_training_on_a_work_dir_in_use_stops(
    tmp_path, tool_env, shapes_data, shapes_options
):
    work_dir = tmp_path / 'work'
    # Long enough to outlive the second run's start; killed below.
    log = open(tmp_path / 'first.log', 'w')
    first = subprocess.Popen(
        _train_argv(
            work_dir,
            shapes_options(shapes_data, max_epochs=200, validate=False),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=tool_env,
    )
    try:
        _wait_for_lock_of(first.pid, work_dir / LOCK_NAME, first, log)
        # Stopped, the first run stays alive and holds its lock, and leaves
        # the cores to the second run (its training would only slow that
        # run's start down).
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(
            _train_argv(
                work_dir,
                shapes_options(shapes_data, max_epochs=1, validate=False),
            ),
            capture_output=True,
            text=True,
            env=tool_env,
            timeout=300,
        )
        assert second.returncode == 1, second.stderr[-3000:]
        assert second.stderr.strip().splitlines() == [
            f'tools/train.py: error: work dir {work_dir} is in use by '
            f'process {first.pid} (lock file {work_dir / LOCK_NAME}): two '
            "runs in one work dir overwrite each other's checkpoints and "
            'logs. Wait for that run to end, stop it, or pass another '
            '--work-dir.'
        ]
        first.send_signal(signal.SIGCONT)
        assert first.poll() is None  # untouched, still training
        # The second run wrote nothing: one run's log folder only.
        logs = [p for p in work_dir.iterdir() if p.is_dir()]
        assert len(logs) == 1, logs
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()
    # The dead run's pid is still in the lock file; the lock is free.
    assert (work_dir / LOCK_NAME).read_text().strip() == str(first.pid)
    with WorkDirLock(str(work_dir)):
        assert (work_dir / LOCK_NAME).read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_lock_is_exclusive_between_processes(tmp_path):
    """A live holder in another process is named; once it ends, the lock
    is free again (the file, with its dead pid, stays)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            '-c',
            'import sys, time\n'
            'from dn_mmdet.utils.work_dir_lock import WorkDirLock\n'
            'lock = WorkDirLock(sys.argv[1]); lock.acquire()\n'
            'print("held", flush=True); time.sleep(600)\n',
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(
            WorkDirInUseError, match=f'in use by process {holder.pid} '
        ):
            WorkDirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = WorkDirLock(str(tmp_path))
    lock.acquire()
    lock.acquire()  # idempotent in its holder
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == ''
