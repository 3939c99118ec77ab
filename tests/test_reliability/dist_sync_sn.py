"""Worker for ``test_distributed.py::test_sn_batch_scope_synchronised``,
launched by torchrun (gloo, CPU), as ``dist_sync_dn.py`` is for DN.

Each process takes its half of ``FixedSamples``, converts ``TinySNNet``
with mmengine's ``convert_sync_batchnorm`` (what the Runner does for
``sync_bn='torch'``) or leaves it as is, runs one training forward and
backward, and saves its SN running estimates and the gradients of its
input and parameters to ``<out>/<phase>_rank<r>.pt``.
"""

import argparse
import os.path as osp

import torch
import torch.distributed as dist
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import convert_sync_batchnorm

import dn_mmdet  # noqa: F401
from dn_mmdet.norm import SwitchNorm2d
from dn_mmdet.utils.distributed import exit_finished_rank

NUM_SAMPLES = 8


class FixedSamples:
    """``NUM_SAMPLES`` fixed random 3x8x8 images and output gradients."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(NUM_SAMPLES, 3, 8, 8, generator=g) * 2 + 1
        self.grad = torch.randn(NUM_SAMPLES, 16, 4, 4, generator=g)


class TinySNNet(nn.Sequential):
    """Two conv + SN + ReLU blocks."""

    def __init__(self) -> None:
        norm = dict(type='SN')
        super().__init__(
            ConvModule(3, 8, 3, padding=1, norm_cfg=norm),
            ConvModule(8, 16, 3, stride=2, padding=1, norm_cfg=norm),
        )


def run(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict:
    """One training forward / backward; the SN statistics, the gradient of
    the input and of every parameter."""
    x = x.clone().requires_grad_(True)
    model.train()
    model(x).backward(grad)
    out = {'input.grad': x.grad}
    for name, m in model.named_modules():
        if isinstance(m, SwitchNorm2d):
            out[f'{name}.running_mean'] = m.bn.running_mean.clone()
            out[f'{name}.running_var'] = m.bn.running_var.clone()
    for name, p in model.named_parameters():
        out[f'{name}.grad'] = p.grad.clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    parser.add_argument('--init', required=True, help='initial weights')
    args = parser.parse_args()
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    data = FixedSamples()
    shard = slice(rank, NUM_SAMPLES, world)  # DefaultSampler, no shuffle
    for phase, sync_bn in (('sync', 'torch'), ('local', None)):
        model = TinySNNet()
        model.load_state_dict(torch.load(args.init))
        if sync_bn:
            model = convert_sync_batchnorm(model, sync_bn)
        result = run(model, data.x[shard], data.grad[shard])
        result['synced_processes'] = model[0].sn.synced_processes()
        torch.save(result, osp.join(args.out, f'{phase}_rank{rank}.pt'))
    dist.destroy_process_group()
    exit_finished_rank()  # as the tools: no teardown for gloo to abort in


if __name__ == '__main__':
    main()
