"""Helpers of the norm tests: layers with non-trivial values, the reference
output, a counting proxy of the C++ kernel."""
import contextlib
import copy
import os

import torch
import torch.nn as nn

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.reference import dynamic_norm_reference
from dn_mmdet.ops import dn_cpu

SHAPES = [(1, 8, 5, 7), (2, 16, 1, 3), (4, 24, 9, 9), (3, 32, 13, 11),
          (8, 96, 4, 4)]

ACTIVATIONS = {
    'none': None,
    'relu': nn.ReLU,
    'relu6': nn.ReLU6,
    'hardtanh': lambda: nn.Hardtanh(-0.5, 0.7),
}


def randomize(dn: DynamicNorm2d, seed: int = 0) -> DynamicNorm2d:
    """Give every parameter and buffer non-trivial values (FC2 starts at 0,
    which would hide half of the SC-Module)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        dn.base_scale.copy_(1 + 0.2 * torch.randn(dn.num_features,
                                                  generator=gen))
        dn.base_shift.copy_(0.2 * torch.randn(dn.num_features, generator=gen))
        if dn.track_running_stats:
            dn.bn.running_mean.normal_(generator=gen)
            dn.bn.running_var.uniform_(0.5, 1.5, generator=gen)
    return dn


def with_activation(dn: DynamicNorm2d, act_name: str) -> DynamicNorm2d:
    act = ACTIVATIONS[act_name]
    if act is not None:
        dn.fuse_activation(act())
    return dn


def reference_output(dn: DynamicNorm2d, x: torch.Tensor) -> torch.Tensor:
    """The reference implementation on a copy of ``dn`` (its statistics
    stay as they are)."""
    return dynamic_norm_reference(copy.deepcopy(dn), x)


class CountingKernel:
    """Counts calls to the built ops (a thin proxy of the real module)."""

    def __init__(self, module):
        self.module, self.calls, self.dn_b_calls = module, 0, 0

    def normalize_act(self, *args):
        self.calls += 1
        return self.module.normalize_act(*args)

    def dn_b_inference(self, *args):
        self.calls += 1
        self.dn_b_calls += 1
        return self.module.dn_b_inference(*args)


#: How a forward is run: (training, autograd, DN_MMDET_FUSED on, the C++
#: kernel available), then the path DynamicNorm2d._select_path must choose
#: for DN-B and for DN-C.
SETTINGS = {
    'train': (True, True, True, True, 'train_kernel', 'torch'),
    'train-aten': (True, True, True, False, 'train_node', 'torch'),
    'train-no-grad': (True, False, True, True, 'kernel', 'kernel'),
    'train-plain': (True, True, False, True, 'torch', 'torch'),
    'eval-no-grad': (False, False, True, True, 'dn_b_kernel', 'kernel'),
    'eval-autograd': (False, True, True, True, 'torch', 'torch'),
    'eval-plain': (False, False, False, True, 'torch', 'torch'),
}


def expected_path(setting: str, mode: str) -> str:
    return SETTINGS[setting][4 if mode == 'B' else 5]


def forward_in(dn: DynamicNorm2d, x: torch.Tensor,
               setting: str) -> torch.Tensor:
    """``dn(x)`` run as ``SETTINGS[setting]`` says (``x`` requires grad
    under autograd; without the kernel, DN runs as where it cannot be
    built)."""
    training, autograd, fused, kernel = SETTINGS[setting][:4]
    dn.train(training)
    previous = os.environ.get('DN_MMDET_FUSED')
    os.environ['DN_MMDET_FUSED'] = '1' if fused else '0'
    try:
        with torch.set_grad_enabled(autograd), without_kernel(not kernel):
            return dn(x.requires_grad_(True) if autograd else x)
    finally:
        if previous is None:
            del os.environ['DN_MMDET_FUSED']
        else:
            os.environ['DN_MMDET_FUSED'] = previous


@contextlib.contextmanager
def without_kernel(hide: bool = True):
    """DN as on a machine where the C++ kernel could not be built."""
    if not hide:
        yield
        return
    load = dn_cpu.load
    dn_cpu.load = lambda: False
    try:
        yield
    finally:
        dn_cpu.load = load


#: The empty-batch cases empty_batch_worker.py runs: (name, layer options,
#: input shape, setting, fused activation).
EMPTY_BATCH_CASES = [
    (f'{mode}-{setting}', dict(mode=mode), (0, 16, 5, 5), setting, 'relu6')
    for mode in ('B', 'C1', 'C2') for setting in SETTINGS
] + [
    ('B-train-no-running-stats', dict(track_running_stats=False),
     (0, 16, 5, 5), 'train', 'none'),
    ('B-eval-no-running-stats', dict(track_running_stats=False),
     (0, 16, 5, 5), 'eval-no-grad', 'none'),
    ('B-train-cumulative', dict(momentum=None), (0, 16, 5, 5), 'train',
     'none'),
    ('B-train-empty-map', dict(), (2, 16, 0, 3), 'train', 'relu'),
    ('B-eval-empty-map', dict(), (2, 16, 0, 3), 'eval-no-grad', 'relu'),
]
