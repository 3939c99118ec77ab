"""``compile=...`` in a DN config through tools/train.py: mmengine's runner
compiles the model's ``train_step`` and the tool trains (a real process).

A module of its own, apart from the DN compile tests
(tests/test_norm/test_dynamic_norm_compile.py): the suite's workers take a
module at a time, and this is its longest test."""

import subprocess
import sys

from helpers import REPO


def test_compile_true_in_a_config_trains_through_train_py(
    tmp_path, tool_env, shapes_data, shapes_options, shapes_config
):
    """``compile=...`` in a DN config: mmengine's runner compiles the
    model's ``train_step`` (forward, loss, backward, optimizer step) and
    tools/train.py trains an epoch. The eager backend: dynamo captures the
    whole step as with inductor (where compiling a training step fails),
    without inductor's code generation of a detector (many minutes here);
    the DN ops' autograd under AOT tracing is the in-process tests'."""
    config = tmp_path / 'compiled.py'
    # SGD over the config's plain parameter groups: dynamo traces its step
    # in about a third of AdamW's operations (one group a parameter here);
    # AdamW's compiled step over such groups is
    # tests/test_engine/test_plain_param_groups_constructor.py's.
    config.write_text(
        f"_base_ = '{shapes_config('dn')}'\n"
        "compile = dict(backend='eager')\n"
        'optim_wrapper = dict(optimizer=dict(_delete_=True, '
        "type='SGD', lr=5e-3, momentum=0.9, weight_decay=1e-4))\n"
    )
    # One iteration of two images: one graph to capture (each new count of
    # boxes would capture the loss's graph again).
    options = shapes_options(
        shapes_data, max_epochs=1, validate=False, input_size=64
    ) + ['train_dataloader.dataset.indices=2']
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
