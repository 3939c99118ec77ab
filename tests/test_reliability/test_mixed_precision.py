"""Mixed-precision training of the BN and DN-B detectors stays finite.

mmengine's ``AmpOptimWrapper`` asserts a CUDA / NPU / MLU / MUSA device, so
``tools/train.py --amp`` selects dn_mmdet's ``BF16OptimWrapper`` (bf16
autocast, no loss scaling) on a CPU-only machine. The first test checks the
training step by hand under bf16 autocast (activations really are bf16); the
second that validation after ``--amp`` training runs in float32; the third
runs ``tools/train.py --amp`` itself on whatever device there is.
"""

import os.path as osp
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmengine.runner.amp import autocast

from dn_mmdet.engine.hooks.utils import non_finite_tensors
from dn_mmdet.utils import load_from_local

STEPS = 3


@pytest.mark.parametrize('kind', ['bn', 'dn'])
@pytest.mark.slow
def test_bf16_autocast_training_steps_stay_finite(
    shapes_cfg, shapes_data, tmp_path, kind
):
    cfg = shapes_cfg(kind, shapes_data, tmp_path, batch_size=4, input_size=96)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    loader = runner.build_dataloader(cfg.train_dataloader)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    model.train()

    # Proof that autocast is active: the first conv computes in bf16.
    dtypes = []
    first_conv = next(
        m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)
    )
    first_conv.register_forward_hook(
        lambda m, args, out: dtypes.append(out.dtype)
    )

    batches = iter(loader)
    for step in range(STEPS):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        with autocast(device_type='cpu', dtype=torch.bfloat16):
            data = model.data_preprocessor(batch, True)
            losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        assert torch.isfinite(loss), (step, log_vars)
        optim_wrapper.backward(loss)
        assert not non_finite_tensors(
            (n, p.grad) for n, p in model.named_parameters()
        ), step
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        assert not non_finite_tensors(model.named_parameters()), step
        assert not non_finite_tensors(model.named_buffers()), step

    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    # Parameters and running statistics stay fp32 under autocast.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stats = [b for n, b in model.named_buffers() if 'running_' in n]
    assert stats and {b.dtype for b in stats} == {torch.float32}


class _ValidationPrecision(Hook):
    """Records, for each validation batch, whether CPU autocast is on and
    the dtype the first conv of the backbone computes in."""

    def __init__(self):
        self.autocast, self.dtypes = [], []

    def before_val(self, runner):
        conv = next(
            m
            for m in runner.model.backbone.modules()
            if isinstance(m, torch.nn.Conv2d)
        )
        conv.register_forward_hook(
            lambda m, args, out: self.dtypes.append(out.dtype)
        )

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        self.autocast.append(torch.is_autocast_enabled('cpu'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU --amp path')
@pytest.mark.slow
def test_validation_after_amp_training_runs_in_float32(
    shapes_cfg, shapes_data, tmp_path
):
    """bf16 autocast (~8x slower than float32 on a CPU without native bf16)
    stays in the training step: validation is float32."""
    cfg = shapes_cfg(
        'bn',
        shapes_data,
        tmp_path,
        '--amp',
        validate=True,
        max_epochs=1,
        batch_size=4,
        input_size=64,
    )
    runner = Runner.from_cfg(cfg)
    probe = _ValidationPrecision()
    runner.register_hook(probe)
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'BF16OptimWrapper'
    assert probe.autocast == [False, False]  # 4 images in batches of 2
    assert set(probe.dtypes) == {torch.float32}


@pytest.mark.parametrize('kind', ['bn', 'dn'])
@pytest.mark.slow
def test_train_py_amp(
    shapes_config, shapes_data, shapes_options, tool_env, tmp_path, kind
):
    work_dir = tmp_path / 'work'
    proc = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, 'tools', 'train.py'),
            shapes_config(kind),
            '--amp',
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *shapes_options(
                shapes_data, max_epochs=1, batch_size=4, validate=False
            ),
        ],
        cwd=REPO,
        env=tool_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    expected = (
        'AmpOptimWrapper' if torch.cuda.is_available() else 'BF16OptimWrapper'
    )
    assert expected in out
    state = load_from_local(str(work_dir / 'epoch_1.pth'))['state_dict']
    assert not non_finite_tensors(state.items())
