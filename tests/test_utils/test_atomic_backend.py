"""Atomic checkpoint writes: an interrupted write never costs a checkpoint."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.fileio import get_file_backend

from dn_mmdet.utils import load_from_local
from dn_mmdet.utils.atomic_backend import AtomicLocalBackend, atomic_write


def _temps(directory):
    return [p.name for p in Path(directory).iterdir() if p.suffix == '.tmp']


def test_registered_for_backend_args(tmp_path):
    backend = get_file_backend(
        str(tmp_path), backend_args=dict(backend='atomic_local')
    )
    assert isinstance(backend, AtomicLocalBackend)


def test_put_writes_complete_file_with_usual_mode(tmp_path):
    backend = AtomicLocalBackend()
    target = tmp_path / 'sub' / 'ckpt.pth'
    backend.put(b'first', target)
    backend.put(b'second version', target)
    backend.put_text('text', tmp_path / 'note.txt')
    assert target.read_bytes() == b'second version'
    assert (tmp_path / 'note.txt').read_text() == 'text'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _temps(target.parent) == [] and _temps(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / 'epoch_1.pth'
    target.write_bytes(b'complete old checkpoint')

    def disk_full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError, match='No space left'):
        atomic_write(target, b'new' * 1000)
    assert target.read_bytes() == b'complete old checkpoint'
    assert _temps(tmp_path) == []


@pytest.mark.slow
def test_killed_writer_leaves_previous_file(tmp_path):
    """A process killed after writing the data but before the rename leaves
    the old file; the next write removes the dead writer's temp file."""
    target = tmp_path / 'ckpt.pth'
    target.write_bytes(b'old')
    script = textwrap.dedent(f"""
        import os, signal
        from dn_mmdet.utils.atomic_backend import AtomicLocalBackend
        def die(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = die
        AtomicLocalBackend().put(b'new' * 100000, {str(target)!r})
    """)
    proc = subprocess.run([sys.executable, '-c', script])
    assert proc.returncode == -9
    assert target.read_bytes() == b'old'
    assert len(_temps(tmp_path)) == 1  # the dead writer's
    AtomicLocalBackend().put(b'new', target)
    assert target.read_bytes() == b'new'
    assert _temps(tmp_path) == []


_CRASHING_TRAIN = """
import os, signal
from toy_runner import build_runner

real_replace = os.replace

def replace(src, dst):
    # Die with the epoch-2 checkpoint fully written to its temp file but
    # not yet in place: the worst moment of a save.
    if str(dst).endswith('epoch_2.pth'):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace
build_runner({work_dir!r}, max_epochs=3).train()
"""


@pytest.mark.slow
def test_crash_during_checkpoint_save_is_resumable(tmp_path, toy, tool_env):
    work_dir = tmp_path / 'crashed'
    # The toy runner imported as the ``toy`` fixture imports it: from the
    # folder it was found in, here put on the subprocess's path.
    env = dict(
        tool_env,
        PYTHONPATH=os.pathsep.join(
            [str(Path(toy.__file__).parent), tool_env['PYTHONPATH']]
        ),
    )
    proc = subprocess.run(
        [sys.executable, '-c', _CRASHING_TRAIN.format(work_dir=str(work_dir))],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    # The previous checkpoint and the record of it are intact ...
    assert not (work_dir / 'epoch_2.pth').exists()
    last = (work_dir / 'last_checkpoint').read_text().strip()
    assert last == str(work_dir / 'epoch_1.pth')
    assert load_from_local(last)['meta']['epoch'] == 1
    # ... and training resumes from it and ends where an uninterrupted run
    # ends.
    resumed = toy.build_runner(work_dir, max_epochs=3, resume=True)
    resumed.train()
    assert _temps(work_dir) == []
    reference = toy.build_runner(tmp_path / 'reference', max_epochs=3)
    reference.train()
    got, want = resumed.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
