"""``compile=...`` in a DN config through tools/train.py: mmengine's runner
compiles the model's ``train_step`` and the tool trains (a real process).

A module of its own, apart from the DN compile tests
(tests/test_norm/test_dynamic_norm_compile.py, which hold the compiled
shapes detector to eager): the suite's workers take a module at a time, and
this is one of its longest tests."""

import subprocess
import sys

import pytest
from helpers import REPO, cls_options

from dn_mmdet.datasets.shapes_cls_generator import generate_shapes_cls_dataset

CLS_DNB = (
    REPO / 'configs/mobilenet_v2/'
    'mobilenet-v2-dnb-r16-goup_1xb32-cpu_shapes-cls.py'
)


@pytest.mark.slow
def test_compile_true_in_a_config_trains_through_train_py(tmp_path, tool_env):
    """``compile=...`` in the DN-B classifier config (MobileNetV2-DN, its
    AdamW): mmengine's runner compiles the model's ``train_step`` (forward,
    loss, backward, optimizer step) and tools/train.py trains an epoch. The
    eager backend: dynamo captures the whole step as with inductor, without
    inductor's code generation; the DN ops' autograd under AOT tracing and
    inductor are the in-process tests'. (The classifier, not the detector:
    dynamo's capture of SSDLite's anchor matching and losses costs minutes
    and tests nothing of dn_mmdet's.) Its loss is plain cross-entropy:
    mmpretrain's LabelSmoothLoss checks the labels with ``.item()``, a
    graph break after which dynamo traces the network again."""
    root = tmp_path / 'shapes_cls'
    generate_shapes_cls_dataset(
        str(root), num_train=2, num_val=2, seed=0, size=32
    )
    config = tmp_path / 'compiled.py'
    config.write_text(
        f"_base_ = '{CLS_DNB}'\ncompile = dict(backend='eager')\n"
        'model = dict(head=dict(loss=dict(_delete_=True, '
        "type='CrossEntropyLoss')))\n"
    )
    # No validation: the epoch's training step is what is compiled.
    options = [*cls_options(root, batch_size=2), 'train_cfg.val_interval=2']
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / 'tools/train.py'),
            str(config),
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=tool_env,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'Model has been "compiled"' in log
    assert 'Epoch(train) [1][1/1]' in log
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
