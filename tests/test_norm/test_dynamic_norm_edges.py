"""Shape edges of every DN path: empty batches, one sample, 1x1 maps, one
value per channel (locally and over synchronised processes), and
``act_cfg=None``.

Each case runs on both implementations (``impl='auto'``, the C++ op where
it applies, and ``'composite'``) and asserts, through the profiler, which
DN op computed it.
"""

import copy
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from dn_helpers import (
    EMPTY_BATCH_CASES,
    SETTINGS,
    forward_in,
    randomize,
    recorded_dn_ops,
    reference_output,
)
from mmcv.cnn import build_norm_layer

from dn_mmdet.norm import DynamicNorm2d, name_norm_layers
from dn_mmdet.norm.reference import dynamic_norm_reference

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(osp.dirname(HERE))


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, HERE, env.get('PYTHONPATH')) if p
    )
    return env


# --------------------------------------------------------------------- #
# One sample, 1x1 maps, one value per channel
# --------------------------------------------------------------------- #
def expected_ops(mode: str, setting: str, impl: str) -> list:
    """The DN ops a forward shows in a profile."""
    training, autograd = SETTINGS[setting]
    if impl == 'auto' and mode == 'B' and (training or not autograd):
        return [
            'dn_mmdet::dn_b_train' if training else 'dn_mmdet::dn_b_inference'
        ]
    return (['dn_mmdet::moments'] if training else []) + [
        'dn_mmdet::normalize_affine'
    ]


@pytest.mark.parametrize('mode', ['B', 'C1', 'C2'])
@pytest.mark.parametrize('setting', list(SETTINGS))
@pytest.mark.parametrize(
    'shape', [(1, 16, 3, 4), (2, 16, 1, 1), (1, 16, 1, 1)]
)
@pytest.mark.parametrize('impl', ['auto', 'composite'])
def test_small_inputs_on_every_path(mode, setting, shape, impl):
    """N = 1 with a map and N = 2 with 1x1 maps are valid everywhere, and
    so is one value per channel in eval: each path computes what the
    reference does, statistics included. One value per channel in training
    is refused, naming the layer."""
    torch.manual_seed(0)
    model = nn.Sequential(
        randomize(DynamicNorm2d(16, r=4, mode=mode, impl=impl)).double()
    )
    name_norm_layers(model)
    dn = model[0]
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    training = SETTINGS[setting][0]
    if training and shape == (1, 16, 1, 1):
        with pytest.raises(ValueError) as error:
            forward_in(dn, x, setting)
        message = str(error.value)
        assert 'DN layer "0" (DynamicNorm2d, 16 channels)' in message
        assert '1 value(s) per channel' in message
        assert 'train_dataloader.batch_size' in message
        assert int(dn.bn.num_batches_tracked) == 0
        return
    ref = copy.deepcopy(dn).train(training)
    with torch.no_grad():
        expected = dynamic_norm_reference(ref, x)
    with recorded_dn_ops() as ops:
        y = forward_in(dn, x, setting)
    assert ops == expected_ops(mode, setting, impl)
    torch.testing.assert_close(y.detach(), expected, rtol=1e-9, atol=1e-9)
    for key, value in ref.bn.state_dict().items():
        torch.testing.assert_close(
            dn.bn.state_dict()[key], value, rtol=1e-9, atol=1e-9
        )
    if y.requires_grad:
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------- #
# Empty batches (in a process of their own)
# --------------------------------------------------------------------- #
@pytest.fixture(scope='module')
def empty_batch_results():
    proc = subprocess.run(
        [sys.executable, osp.join(HERE, 'empty_batch_worker.py')],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    started, results = [], {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if 'start' in record:
            started.append(record['start'])
        else:
            results[record['case']] = record
    return proc, started, results


@pytest.mark.parametrize(
    'case', EMPTY_BATCH_CASES, ids=[case[0] for case in EMPTY_BATCH_CASES]
)
@pytest.mark.slow
def test_empty_batch_on_every_path(case, empty_batch_results):
    """As BatchNorm: an empty output, the running statistics (and
    num_batches_tracked) untouched, and a backward that works (zero
    gradients for the SC-Module, as in any step)."""
    name, _, shape, setting, _ = case
    proc, started, results = empty_batch_results
    assert name in results, (
        f'the worker died (exit status {proc.returncode}) in case '
        f'{started[-1] if started else "?"}:\n{proc.stderr[-3000:]}'
    )
    result = results[name]
    assert result['error'] is None
    assert result['ops'] == []  # no statistics to compute
    assert result['shape'] == list(shape)
    assert result['dtype'] == 'torch.float32'
    assert result['statistics_untouched']
    if SETTINGS[setting][1]:  # autograd
        assert result['x_grad_shape'] == list(shape)
        assert result['sc_grads'] == [0.0, 0.0, 0.0]


def test_empty_batch_keeps_running_averages_exact():
    """Empty batches between real ones change nothing, not even the
    cumulative average (momentum=None), which counts batches."""
    torch.manual_seed(0)
    xs = [torch.randn(4, 8, 5, 5) * 2 + 1 for _ in range(3)]
    dn, plain = (
        DynamicNorm2d(8, momentum=None),
        DynamicNorm2d(8, momentum=None),
    )
    for x in xs:
        dn(x)
        dn(x[:0])
        plain(x)
    torch.testing.assert_close(dn.bn.running_mean, plain.bn.running_mean)
    torch.testing.assert_close(dn.bn.running_var, plain.bn.running_var)
    assert int(dn.bn.num_batches_tracked) == 3


# --------------------------------------------------------------------- #
# Synchronised statistics over two processes
# --------------------------------------------------------------------- #
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def synced_results(tmp_path_factory):
    out = tmp_path_factory.mktemp('synced')
    torchrun = osp.join(osp.dirname(sys.executable), 'torchrun')
    proc = subprocess.run(
        [
            torchrun,
            '--nproc_per_node=2',
            f'--master_port={_free_port()}',
            osp.join(HERE, 'dist_edge_worker.py'),
            '--out',
            str(out),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.parametrize(
    'case', ['one_rank_empty', 'one_value_per_rank', 'all_ranks_empty']
)
@pytest.mark.slow
def test_synced_statistics_on_shape_edges(case, synced_results):
    """One process with an empty batch still joins the all-reduce (else the
    other would wait forever) and keeps its statistics equal to the
    other's; one value per channel on each of two processes is valid (two
    values in all, as SyncBatchNorm allows); all processes empty: nothing
    changes. Outputs, input gradients and statistics equal one process
    over the whole batch."""
    import dist_edge_worker as worker

    ranks = [
        torch.load(str(synced_results / f'{case}_rank{r}.pt'))
        for r in range(2)
    ]
    assert [r['synced'] for r in ranks] == [2, 2]
    xs = worker.make_inputs(case)
    single = worker.make_layer().train()
    before = {k: v.clone() for k, v in single.bn.state_dict().items()}
    x = torch.cat(xs).requires_grad_(True)
    if x.shape[0] == 0:
        y = single(x)
        assert y.shape == x.shape
        for rank in ranks:
            assert rank['y'].shape == xs[0].shape
            for key, value in before.items():
                assert torch.equal(rank['statistics'][key], value)
        return
    y = single(x)
    weights = torch.cat(
        [
            torch.arange(part.numel(), dtype=y.dtype).view_as(part)
            for part in xs
        ]
    )
    (y * weights).sum().backward()
    rows = [slice(0, len(xs[0])), slice(len(xs[0]), len(x))]
    for rank, part in zip(ranks, rows):
        torch.testing.assert_close(rank['y'], y[part].detach())
        torch.testing.assert_close(rank['x_grad'], x.grad[part])
        for key, value in single.bn.state_dict().items():
            torch.testing.assert_close(rank['statistics'][key], value)


# --------------------------------------------------------------------- #
# act_cfg=None
# --------------------------------------------------------------------- #
def test_act_cfg_none_means_no_activation_in_the_sc_module():
    """As ``ConvModule(act_cfg=None)``: FC2 follows FC1 directly. The C++
    op, whose SC-Module has the sigmoid, does not compute it: the
    composite does."""
    _, dn = build_norm_layer(dict(type='DN', r=4, act_cfg=None), 16)
    assert isinstance(dn.sc.act, nn.Identity)
    randomize(dn).double()
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    sc = dn.sc
    delta = sc.fc2(sc.fc1(x.mean(dim=(2, 3))))
    alpha = delta[:, :16] + dn.base_scale
    lam = delta[:, 16:] + dn.base_shift
    for setting in ('train', 'eval-no-grad'):
        training = SETTINGS[setting][0]
        dn.train(training)
        mean = x.mean(dim=(0, 2, 3)) if training else dn.bn.running_mean
        var = (
            x.var(dim=(0, 2, 3), unbiased=False)
            if training
            else dn.bn.running_var
        )
        x_tilde = (x - mean[:, None, None]) / (
            var[:, None, None] + dn.eps
        ).sqrt()
        expected = x_tilde * alpha[:, :, None, None] + lam[:, :, None, None]
        with recorded_dn_ops() as ops:
            y = forward_in(dn, x.clone(), setting)
        assert ops == expected_ops('C1', setting, 'composite')
        torch.testing.assert_close(
            y.detach(), expected.detach(), rtol=1e-9, atol=1e-9
        )
    torch.testing.assert_close(y, reference_output(dn, x))
