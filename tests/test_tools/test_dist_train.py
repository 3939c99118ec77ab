"""tools/dist_train.sh: two torchrun processes train on CPU with gloo."""
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tool_helpers import CONFIG, REPO, tiny_options, tool_env


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_is_in_the_venv():
    env = tool_env()
    assert shutil.which('torchrun', path=env['PATH']) is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_dist_train_two_processes_on_cpu(shapes_root, tmp_path):
    work_dir = tmp_path / 'dist'
    env = dict(tool_env(), PORT=str(_free_port()))
    proc = subprocess.run([
        'bash',
        str(REPO / 'tools/dist_train.sh'),
        str(CONFIG), '2', '--work-dir',
        str(work_dir), '--cfg-options',
        *tiny_options(shapes_root, max_epochs=2)
    ],
                          capture_output=True,
                          text=True,
                          cwd=tmp_path,
                          env=env,
                          timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "using the 'gloo' backend" in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    # Each rank draws half of the training images.
    assert re.search(r'Epoch\(train\) \[2\]\[\d+/\d+\]', log)
    checkpoint = torch.load(Path(work_dir) / 'epoch_2.pth')
    assert checkpoint['meta']['epoch'] == 2
    # Evaluation gathered the predictions of both ranks (4 val images).
    assert 'coco/bbox_mAP' in log
