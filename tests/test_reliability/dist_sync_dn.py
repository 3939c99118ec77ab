"""Worker for ``test_distributed.py``, launched by torchrun (gloo, CPU).

Each process takes its share of ``FixedSamples`` (the split of mmengine's
``DefaultSampler``), converts ``TinyDNNet`` with mmengine's
``convert_sync_batchnorm`` (what the Runner does for ``sync_bn='torch'``)
or leaves it as is, runs one training forward and backward, and saves its
DN running statistics to ``<out>/<phase>_rank<r>.pt``.

Why not the Runner itself: on CPU, torch's DistributedDataParallel refuses
any model holding a SyncBatchNorm ("SyncBatchNorm layers only work with GPU
modules"), DN's statistics child included, so ``sync_bn`` training can only
run on GPUs. What is checked here is DN's own all-reduce, which is the same
code on CPU and GPU.
"""

import argparse
import os.path as osp

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModel, convert_sync_batchnorm

import dn_mmdet  # noqa: F401
from dn_mmdet.utils.distributed import exit_finished_rank

NUM_SAMPLES = 8


class FixedSamples:
    """``NUM_SAMPLES`` fixed random 3x8x8 images with binary labels."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(NUM_SAMPLES, 3, 8, 8, generator=g) * 2 + 1
        self.y = torch.randint(0, 2, (NUM_SAMPLES,), generator=g)


class TinyDNNet(BaseModel):
    """Two conv + DN-B + ReLU blocks and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        norm = dict(type='DN', r=4)
        self.backbone = nn.Sequential(
            ConvModule(3, 8, 3, padding=1, norm_cfg=norm),
            ConvModule(8, 16, 3, stride=2, padding=1, norm_cfg=norm),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, inputs, labels=None, mode='loss'):
        logits = self.head(self.backbone(inputs).mean((2, 3)))
        if mode == 'loss':
            return dict(loss_cls=F.cross_entropy(logits, labels))
        return logits


def dn_statistics(model: nn.Module) -> dict:
    """``{name.running_mean/var: tensor}`` of every DN layer."""
    from dn_mmdet.norm import DynamicNorm2d

    stats = {}
    for name, m in model.named_modules():
        if isinstance(m, DynamicNorm2d):
            stats[f'{name}.running_mean'] = m.bn.running_mean.clone()
            stats[f'{name}.running_var'] = m.bn.running_var.clone()
    return stats


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
        model = TinyDNNet()
        model.load_state_dict(torch.load(args.init)['state_dict'])
        if sync_bn:
            model = convert_sync_batchnorm(model, sync_bn)
        model.train()
        losses = model(data.x[shard], data.y[shard], mode='loss')
        losses['loss_cls'].backward()  # through the all-reduce, too
        stats = dn_statistics(model)
        stats['bn_types'] = sorted(
            {type(m.bn).__name__ for m in model.modules() if hasattr(m, 'bn')}
        )
        torch.save(stats, osp.join(args.out, f'{phase}_rank{rank}.pt'))
    dist.destroy_process_group()
    exit_finished_rank()  # as the tools: no teardown for gloo to abort in


if __name__ == '__main__':
    main()
