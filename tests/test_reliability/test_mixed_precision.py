"""Mixed-precision training of the BN and DN-B detectors stays finite.

mmengine's ``AmpOptimWrapper`` asserts a CUDA / NPU / MLU / MUSA device, so
``tools/train.py --amp`` selects dn_mmdet's ``BF16OptimWrapper`` (bf16
autocast, no loss scaling) on a CPU-only machine. The first test checks the
training step by hand under bf16 autocast (activations really are bf16); the
second runs ``tools/train.py --amp`` itself on whatever device there is.
"""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.runner import CheckpointLoader, Runner
from mmengine.runner.amp import autocast

from dn_mmdet.engine.hooks.nonfinite_hook import non_finite_tensors

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STEPS = 3


@pytest.mark.parametrize('config', ['BN_CONFIG', 'DN_CONFIG'])
def test_bf16_autocast_training_steps_stay_finite(reliability, shapes_data,
                                                  tmp_path, config):
    cfg = reliability.shapes_cfg(
        getattr(reliability, config), shapes_data, tmp_path, input_size=96)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    loader = runner.build_dataloader(cfg.train_dataloader)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    model.train()

    # Proof that autocast is active: the first conv computes in bf16.
    dtypes = []
    first_conv = next(m for m in model.backbone.modules()
                      if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda m, args, out: dtypes.append(out.dtype))

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
            (n, p.grad) for n, p in model.named_parameters()), step
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        assert not non_finite_tensors(model.named_parameters()), step
        assert not non_finite_tensors(model.named_buffers()), step

    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    # Parameters and running statistics stay fp32 under autocast.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stats = [b for n, b in model.named_buffers() if 'running_' in n]
    assert stats and {b.dtype for b in stats} == {torch.float32}


@pytest.mark.parametrize('config', ['BN_CONFIG', 'DN_CONFIG'])
def test_train_py_amp(reliability, shapes_data, tmp_path, config):
    config_file = tmp_path / 'amp_shapes.py'
    data_root = shapes_data + '/'
    config_file.write_text(
        f"_base_ = [{getattr(reliability, config)!r}]\n"
        f"data_root = {data_root!r}\n"
        "train_dataloader = dict(batch_size=4, num_workers=0,\n"
        "    persistent_workers=False,\n"
        "    dataset=dict(data_root=data_root,\n"
        "                 filter_cfg=dict(filter_empty_gt=False)))\n"
        "val_dataloader = None\nval_cfg = None\nval_evaluator = None\n"
        "test_dataloader = None\ntest_cfg = None\ntest_evaluator = None\n"
        "train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop',\n"
        "                 max_epochs=1)\n"
        "default_hooks = dict(logger=dict(interval=1),\n"
        "    checkpoint=dict(save_best=None))\n")
    work_dir = tmp_path / 'work'
    proc = subprocess.run([
        sys.executable,
        osp.join(REPO, 'tools', 'train.py'),
        str(config_file), '--amp', '--work-dir',
        str(work_dir)
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    expected = ('AmpOptimWrapper'
                if torch.cuda.is_available() else 'BF16OptimWrapper')
    assert expected in out
    state = CheckpointLoader.load_checkpoint(str(work_dir /
                                                 'epoch_1.pth'))['state_dict']
    assert not non_finite_tensors(state.items())
