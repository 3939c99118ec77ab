"""Worker of test_dynamic_norm_edges.py, run by torchrun (2 processes,
gloo, CPU): DN with synchronised statistics (a SyncBatchNorm child, as
``sync_bn='torch'`` makes it) on the shape edges.

For each case every process runs one training forward and backward on its
share of a batch both draw from the same seed, and saves its output, input
gradient and statistics to ``<out>/<case>_rank<r>.pt``.
"""

import argparse
import os.path as osp

import torch
import torch.distributed as dist
import torch.nn as nn
from dn_helpers import randomize
from mmengine.model import convert_sync_batchnorm

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.utils.distributed import exit_finished_rank

#: case: the (N, H, W) of rank 0's and rank 1's inputs.
CASES = {
    'one_rank_empty': ((3, 4, 4), (0, 4, 4)),
    'one_value_per_rank': ((1, 1, 1), (1, 1, 1)),
    'all_ranks_empty': ((0, 4, 4), (0, 4, 4)),
}
CHANNELS = 8


def make_layer() -> DynamicNorm2d:
    return randomize(DynamicNorm2d(CHANNELS, r=4), seed=0).double()


def make_inputs(case: str):
    """Both ranks' inputs, drawn from one seed."""
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randn(n, CHANNELS, h, w, generator=gen, dtype=torch.float64)
        for n, h, w in CASES[case]
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    for case in CASES:
        dn = convert_sync_batchnorm(nn.Sequential(make_layer()))[0].train()
        assert isinstance(dn.bn, nn.SyncBatchNorm)
        x = make_inputs(case)[rank].requires_grad_(True)
        y = dn(x)
        # weights differ per element, so the gradient is not trivially 0
        (
            y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)
        ).sum().backward()
        torch.save(
            dict(
                y=y.detach(),
                x_grad=x.grad,
                synced=dn.synced_processes(),
                statistics=dict(dn.bn.state_dict()),
            ),
            osp.join(args.out, f'{case}_rank{rank}.pt'),
        )
    dist.destroy_process_group()
    exit_finished_rank()  # as the tools: no teardown for gloo to abort in


if __name__ == '__main__':
    main()
