"""DN statistics across two processes on CPU (torch's launcher + gloo;
``tools/dist_train.sh`` is tested in tests/test_tools/test_dist_train.py).

* with ``sync_bn='torch'`` (mmengine's ``convert_sync_batchnorm``), DN
  (and SN's batch-scope) statistics are all-reduced: after one training
  forward / backward the running statistics of both ranks are identical
  and equal those of a single process seeing the whole batch; without it
  they are not. (On CPU
  torch's DDP refuses SyncBatchNorm modules, so this runs without the
  Runner: see ``dist_sync_dn.py``.)
"""

import os.path as osp
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from helpers import free_port, load_module, output_tail, run_python

HERE = osp.dirname(osp.abspath(__file__))


def _load_worker(name='dist_sync_dn'):
    return load_module(osp.join(HERE, f'{name}.py'))


def _run_two_ranks(
    name: str, out: Path, init: str, env: Dict[str, str]
) -> Callable[[str, int], dict]:
    """Run the worker ``<name>.py --out OUT --init INIT`` on two gloo ranks
    (torch's launcher); return ``load(phase, rank)``, reading what a rank
    saved of a phase ('sync' or 'local')."""
    proc = run_python(
        [
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=2',
            f'--master_port={free_port()}',
            osp.join(HERE, f'{name}.py'),
            '--out',
            out,
            '--init',
            init,
        ],
        env=env,
    )
    assert proc.returncode == 0, output_tail(proc)

    def load(phase, rank):
        return torch.load(str(out / f'{phase}_rank{rank}.pt'))

    return load


@pytest.mark.slow
def test_dn_statistics_synchronised_with_sync_bn(tmp_path, tool_env):
    worker = _load_worker()
    torch.manual_seed(0)
    model = worker.TinyDNNet()
    model.init_weights()
    init = str(tmp_path / 'init.pth')
    torch.save(dict(state_dict=model.state_dict()), init)

    load = _run_two_ranks('dist_sync_dn', tmp_path, init, tool_env)

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
            sync0[key], expected, rtol=1e-5, atol=1e-6, msg=key
        )

    # Control: without sync_bn every rank keeps statistics of its own half.
    local0, local1 = load('local', 0), load('local', 1)
    assert local0.pop('bn_types') == ['BatchNorm2d']
    local1.pop('bn_types')
    for key in reference:
        assert not torch.allclose(local0[key], local1[key]), key
        assert not torch.allclose(local0[key], reference[key]), key


@pytest.mark.slow
def test_sn_batch_scope_synchronised_with_sync_bn(tmp_path, tool_env):
    """Two gloo ranks with ``sync_bn``: SN's batch scope, running
    estimates and gradients are those of one process seeing both halves
    (the input gradient through the all-reduce too); without it, each
    rank's are its own."""
    worker = _load_worker('dist_sync_sn')
    torch.manual_seed(0)
    model = worker.TinySNNet()
    with torch.no_grad():  # mixing weights away from the uniform start
        for p in model.parameters():
            if p.dim() == 1 and p.numel() == 3:
                p.copy_(torch.randn(3))
    init = str(tmp_path / 'init.pth')
    torch.save(model.state_dict(), init)

    load = _run_two_ranks('dist_sync_sn', tmp_path, init, tool_env)

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
                    sync[rank][key], expected[rank::2], msg=key, **close
                )
        elif key.endswith('.grad'):  # each rank's share of the whole
            torch.testing.assert_close(
                sync[0][key] + sync[1][key],
                expected,
                rtol=1e-5,
                atol=1e-5 * float(expected.abs().max()),
                msg=key,
            )
        else:
            assert torch.equal(sync[0][key], sync[1][key]), key
            torch.testing.assert_close(
                sync[0][key], expected, msg=key, **close
            )
            assert not torch.allclose(local[0][key], local[1][key]), key
    assert not torch.allclose(
        local[0]['input.grad'], whole['input.grad'][0::2], **close
    )
