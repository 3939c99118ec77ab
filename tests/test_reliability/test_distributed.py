"""Two-process training on CPU (torchrun + gloo).

* ``tools/dist_train.sh`` trains the embedded DN-B config for a few
  iterations;
* with ``sync_bn='torch'`` (mmengine's ``convert_sync_batchnorm``), DN
  statistics are all-reduced: after one training forward / backward the
  running statistics of both ranks are identical and equal those of a
  single process seeing the whole batch; without it they are not. (On CPU
  torch's DDP refuses SyncBatchNorm modules, so this runs without the
  Runner: see ``dist_sync_dn.py``.)
"""
import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys

import torch
from mmengine.runner import CheckpointLoader

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(osp.dirname(HERE))
TORCHRUN = osp.join(osp.dirname(sys.executable), 'torchrun')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, env.get('PYTHONPATH')) if p)
    return env


def _load_worker():
    spec = importlib.util.spec_from_file_location(
        'dist_sync_dn', osp.join(HERE, 'dist_sync_dn.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dn_statistics_synchronised_with_sync_bn(tmp_path):
    worker = _load_worker()
    torch.manual_seed(0)
    model = worker.TinyDNNet()
    model.init_weights()
    init = str(tmp_path / 'init.pth')
    torch.save(dict(state_dict=model.state_dict()), init)

    proc = subprocess.run([
        TORCHRUN, '--nproc_per_node=2', f'--master_port={_free_port()}',
        osp.join(HERE, 'dist_sync_dn.py'), '--out',
        str(tmp_path), '--init', init
    ],
                          env=_env(),
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def load(phase, rank):
        return torch.load(str(tmp_path / f'{phase}_rank{rank}.pt'))

    # One process over all samples (the ranks drew disjoint halves).
    model.train()
    data = worker.FixedSamples()
    model(data.x, data.y, mode='loss')
    reference = worker.dn_statistics(model)
    assert len(reference) == 4

    sync0, sync1 = load('sync', 0), load('sync', 1)
    assert sync0.pop('bn_types') == ['SyncBatchNorm']
    sync1.pop('bn_types')
    for key, expected in reference.items():
        assert torch.equal(sync0[key], sync1[key]), key
        torch.testing.assert_close(
            sync0[key], expected, rtol=1e-5, atol=1e-6, msg=key)

    # Control: without sync_bn every rank keeps statistics of its own half.
    local0, local1 = load('local', 0), load('local', 1)
    assert local0.pop('bn_types') == ['BatchNorm2d']
    local1.pop('bn_types')
    for key in reference:
        assert not torch.allclose(local0[key], local1[key]), key
        assert not torch.allclose(local0[key], reference[key]), key


def test_dist_train_sh_trains_embedded_config(reliability, shapes_data,
                                              tmp_path):
    # A derived config file, as a user would write one.
    config = tmp_path / 'dist_shapes.py'
    data_root = shapes_data + '/'
    config.write_text(
        f"_base_ = [{reliability.DN_CONFIG!r}]\n"
        f"data_root = {data_root!r}\n"
        "train_dataloader = dict(batch_size=2, num_workers=0,\n"
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
    env = _env()
    env.update(PORT=str(_free_port()), TORCHRUN=TORCHRUN)
    proc = subprocess.run([
        'bash',
        osp.join(REPO, 'tools', 'dist_train.sh'),
        str(config), '2', '--work-dir',
        str(work_dir)
    ],
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'Distributed launcher: pytorch' in out
    assert 'GPU number: 2' in out  # mmengine's name for the world size
    # 8 images, 2 a batch on each of 2 processes: 2 iterations.
    assert 'Epoch(train) [1][2/2]' in out
    state = CheckpointLoader.load_checkpoint(str(work_dir /
                                                 'epoch_1.pth'))['state_dict']
    assert all(
        torch.isfinite(v).all() for v in state.values()
        if v.is_floating_point())


def _load_sn_worker():
    spec = importlib.util.spec_from_file_location(
        'dist_sync_sn', osp.join(HERE, 'dist_sync_sn.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sn_batch_scope_synchronised_with_sync_bn(tmp_path):
    """Two gloo ranks with ``sync_bn``: SN's batch scope, running
    estimates and gradients are those of one process seeing both halves
    (the input gradient through the all-reduce too); without it, each
    rank's are its own."""
    worker = _load_sn_worker()
    torch.manual_seed(0)
    model = worker.TinySNNet()
    with torch.no_grad():  # mixing weights away from the uniform start
        for p in model.parameters():
            if p.dim() == 1 and p.numel() == 3:
                p.copy_(torch.randn(3))
    init = str(tmp_path / 'init.pth')
    torch.save(model.state_dict(), init)

    proc = subprocess.run([
        TORCHRUN, '--nproc_per_node=2', f'--master_port={_free_port()}',
        osp.join(HERE, 'dist_sync_sn.py'), '--out',
        str(tmp_path), '--init', init
    ],
                          env=_env(),
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def load(phase, rank):
        return torch.load(str(tmp_path / f'{phase}_rank{rank}.pt'))

    data = worker.FixedSamples()
    whole = worker.run(model, data.x, data.grad)
    sync = [load('sync', r) for r in range(2)]
    local = [load('local', r) for r in range(2)]
    assert [s.pop('synced_processes') for s in sync] == [2, 2]
    assert [s.pop('synced_processes') for s in local] == [1, 1]
    close = dict(rtol=1e-5, atol=1e-6)
    for key, expected in whole.items():
        if key == 'input.grad':
            for rank in range(2):
                torch.testing.assert_close(
                    sync[rank][key], expected[rank::2], msg=key, **close)
        elif key.endswith('.grad'):  # each rank's share of the whole
            torch.testing.assert_close(
                sync[0][key] + sync[1][key], expected, rtol=1e-5,
                atol=1e-5 * float(expected.abs().max()), msg=key)
        else:
            assert torch.equal(sync[0][key], sync[1][key]), key
            torch.testing.assert_close(sync[0][key], expected, msg=key,
                                       **close)
            assert not torch.allclose(local[0][key], local[1][key]), key
    assert not torch.allclose(local[0]['input.grad'],
                              whole['input.grad'][0::2], **close)
