"""A training run killed with SIGKILL in the middle of an epoch and
restarted with ``--resume`` ends with the same weights and the same
evaluation as an uninterrupted run (same seed, deterministic mode, CPU)."""

import glob
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO

from dn_mmdet.utils import load_from_local

MAX_EPOCHS = 3


@pytest.fixture
def train(shapes_data, shapes_config, shapes_options, tool_env):
    """Start tools/train.py on the BN shapes config, seeded."""
    options = shapes_options(shapes_data, max_epochs=MAX_EPOCHS, seed=0)

    def start(work_dir, *extra, **popen_kwargs):
        argv = [
            sys.executable,
            str(REPO / 'tools/train.py'),
            shapes_config('bn'),
            '--work-dir',
            str(work_dir),
            *extra,
            '--cfg-options',
            *options,
        ]
        return subprocess.Popen(
            argv, env=tool_env, cwd=work_dir.parent, text=True, **popen_kwargs
        )

    return start


def _log_text(work_dir):
    return ''.join(
        Path(p).read_text() for p in glob.glob(str(work_dir / '*/*.log'))
    )


def _kill_during_epoch_2(proc, work_dir, timeout=600):
    """SIGKILL ``proc`` once epoch 1's checkpoint is recorded and epoch 2
    has logged its second iteration (of four: it is mid-epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, 'training ended before it was killed'
        record = work_dir / 'last_checkpoint'
        if (
            record.is_file()
            and record.read_text().strip().endswith('epoch_1.pth')
            and 'Epoch(train) [2][2/' in _log_text(work_dir)
        ):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError('epoch 2 did not start in time')


def _final_val_metrics(work_dir):
    """The ``coco/*`` metrics of the last epoch's validation."""
    for path in glob.glob(str(work_dir / '*/vis_data/scalars.json')):
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                if entry.get('step') == MAX_EPOCHS and any(
                    k.startswith('coco/') for k in entry
                ):
                    return {
                        k: v for k, v in entry.items() if k.startswith('coco/')
                    }
    raise AssertionError(f'no epoch-{MAX_EPOCHS} validation in {work_dir}')


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(
    train, tool_env, tmp_path
):
    ref_dir, run_dir = tmp_path / 'reference', tmp_path / 'interrupted'
    ref_dir.mkdir()
    run_dir.mkdir()
    # The uninterrupted twin runs alongside (results do not depend on load).
    devnull = subprocess.DEVNULL
    reference = train(ref_dir, stdout=devnull, stderr=devnull)
    interrupted = train(run_dir, stdout=devnull, stderr=devnull)
    try:
        _kill_during_epoch_2(interrupted, run_dir)
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
    assert interrupted.returncode == -signal.SIGKILL
    assert not (run_dir / 'epoch_2.pth').exists()

    resumed = train(
        run_dir, '--resume', stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    resumed_log, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, resumed_log[-3000:]
    # Through dn_mmdet's weights-only loader, from epoch 1's checkpoint.
    assert (
        'Loads checkpoint by local backend from path: '
        f'{run_dir / "epoch_1.pth"}'
    ) in resumed_log
    assert 'resumed epoch: 1, iter:' in resumed_log
    assert reference.wait(timeout=900) == 0

    # Loaded with torch's default, i.e. weights_only=True.
    final = load_from_local(run_dir / f'epoch_{MAX_EPOCHS}.pth')
    expected = load_from_local(ref_dir / f'epoch_{MAX_EPOCHS}.pth')
    assert final['meta']['epoch'] == expected['meta']['epoch'] == MAX_EPOCHS
    assert final['state_dict'].keys() == expected['state_dict'].keys()
    different = [
        k
        for k, v in expected['state_dict'].items()
        if not torch.equal(final['state_dict'][k], v)
    ]
    assert different == []
    assert _final_val_metrics(run_dir) == _final_val_metrics(ref_dir)
    # Torch's weights-only default was in force in those processes too.
    assert ('TORCH_FORCE_NO_' + 'WEIGHTS_ONLY_LOAD') not in tool_env
