"""SN and MABN + CenConv train the shapes SSDLite end to end through
mmengine's Runner (finite losses, a checkpoint that loads strictly), and a
MABN run resumed from a checkpoint taken in the middle of its window ends
exactly where an uninterrupted run does."""

import glob
import json
import math
import os.path as osp

import pytest
import torch
from mmengine.registry import MODELS
from mmengine.runner import Runner, load_checkpoint

from dn_mmdet.norm import CenConv2d, MABN2d, SwitchNorm2d
from dn_mmdet.utils import load_from_local, safe_checkpoint_loading

NAMES = ('sn', 'mabn-cenconv')
NUM_TRAIN = 8  # images of the shapes_data fixture


def _small_window(cfg, window=3):
    """MABN sized to the shrunk batch, with a window of ``window``
    iterations and warm-ups short enough for a test run to pass them."""
    batch = cfg.train_dataloader.batch_size
    cfg.model.backbone.norm_cfg.update(
        batch_size=batch,
        real_batch_size=window * batch,
        warmup_iters=2,
        renorm_warmup_iters=2,
    )
    return cfg


def _losses(work_dir):
    (path,) = glob.glob(osp.join(str(work_dir), '*/vis_data/scalars.json'))
    with open(path) as f:
        return [json.loads(line)['loss'] for line in f if 'loss' in line]


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.slow
def test_trains_end_to_end(shapes_cfg, shapes_data, tmp_path, name):
    cfg = shapes_cfg(name, shapes_data, tmp_path, max_epochs=2, input_size=64)
    # Its own visualizer: mmengine keeps them as named global instances.
    cfg.visualizer.name = cfg.experiment_name
    if name == 'mabn-cenconv':
        _small_window(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = _losses(tmp_path)
    iters = 2 * NUM_TRAIN // cfg.train_dataloader.batch_size
    assert len(losses) == iters and all(math.isfinite(v) for v in losses)

    model = MODELS.build(cfg.model)
    with safe_checkpoint_loading():
        load_checkpoint(model, str(tmp_path / 'epoch_2.pth'), strict=True)
    kind = SwitchNorm2d if name == 'sn' else MABN2d
    layers = [m for m in model.backbone.modules() if isinstance(m, kind)]
    assert len(layers) == 52
    assert all(int(m.bn.num_batches_tracked) == iters for m in layers)
    if name == 'mabn-cenconv':
        assert all(m.buffer_gz.abs().sum() > 0 for m in layers)
        assert (
            sum(isinstance(m, CenConv2d) for m in model.backbone.modules())
            == 52
        )
    else:
        # The mixing weights moved from their equal start.
        assert any(
            not torch.equal(m.mean_weight, torch.ones(3)) for m in layers
        )


@pytest.mark.slow
def test_mabn_resume_mid_window_equals_uninterrupted(
    shapes_cfg, shapes_data, tmp_path
):
    """2 iterations an epoch, a window of 3: epoch 1's checkpoint is taken
    with the window partly filled, and iteration 4 (epoch 2) normalises by
    the window average; resuming from it for epoch 2 gives the same weights
    and MABN buffers as 2 epochs in one go."""

    def cfg_for(work_dir, max_epochs):
        cfg = shapes_cfg(
            'mabn-cenconv',
            shapes_data,
            work_dir,
            max_epochs=max_epochs,
            batch_size=4,
            seed=0,
            input_size=64,
        )
        return _small_window(cfg)

    straight = Runner.from_cfg(cfg_for(tmp_path / 'straight', 2))
    straight.train()
    first = Runner.from_cfg(cfg_for(tmp_path / 'resumed', 1))
    first.train()
    cfg = cfg_for(tmp_path / 'resumed', 2)
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'resumed' / 'epoch_1.pth')
    resumed = Runner.from_cfg(cfg)
    resumed.train()

    expected = load_from_local(tmp_path / 'straight' / 'epoch_2.pth')
    got = load_from_local(tmp_path / 'resumed' / 'epoch_2.pth')
    expected, got = expected['state_dict'], got['state_dict']
    checkpoint_1 = load_from_local(cfg.load_from)['state_dict']
    window_keys = [k for k in expected if k.endswith('.buffer_x2')]
    assert window_keys
    t = checkpoint_1[
        window_keys[0].replace('buffer_x2', 'bn.num_batches_tracked')
    ]
    assert int(t) == 2  # saved mid-window (m = 3)
    assert got.keys() == expected.keys()
    assert [k for k, v in expected.items() if not torch.equal(got[k], v)] == []
