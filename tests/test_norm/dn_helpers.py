"""Helpers of the norm tests: layers with non-trivial values, the reference
output, how a forward is run, and which DN ops the profiler saw."""

import contextlib
import copy
import math
from typing import List

import torch

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.reference import dynamic_norm_reference

SHAPES = [
    (1, 8, 5, 7),
    (2, 16, 1, 3),
    (4, 24, 9, 9),
    (3, 32, 13, 11),
    (8, 96, 4, 4),
]

#: Clamps a parent may fuse into DN (``forward_clamped``'s bounds).
CLAMPS = {
    'none': (-math.inf, math.inf),
    'relu': (0.0, math.inf),
    'relu6': (0.0, 6.0),
    'hardtanh': (-0.5, 0.7),
}

#: How a forward is run: (training, autograd).
SETTINGS = {
    'train': (True, True),
    'train-no-grad': (True, False),
    'eval-no-grad': (False, False),
    'eval-autograd': (False, True),
}


def randomize(dn: DynamicNorm2d, seed: int = 0) -> DynamicNorm2d:
    """Give every parameter and buffer non-trivial values (FC2 starts at 0,
    which would hide half of the SC-Module)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        dn.base_scale.copy_(
            1 + 0.2 * torch.randn(dn.num_features, generator=gen)
        )
        dn.base_shift.copy_(0.2 * torch.randn(dn.num_features, generator=gen))
        if dn.track_running_stats:
            dn.bn.running_mean.normal_(generator=gen)
            dn.bn.running_var.uniform_(0.5, 1.5, generator=gen)
    return dn


def reference_output(
    dn: DynamicNorm2d, x: torch.Tensor, clamp: str = 'none'
) -> torch.Tensor:
    """The reference implementation on a copy of ``dn`` (its statistics
    stay as they are), then the clamp."""
    y = dynamic_norm_reference(copy.deepcopy(dn), x)
    return y.clamp(*CLAMPS[clamp])


def forward_in(
    dn: DynamicNorm2d, x: torch.Tensor, setting: str, clamp: str = 'none'
) -> torch.Tensor:
    """``dn.forward_clamped(x, CLAMPS[clamp])`` run as ``SETTINGS[setting]``
    says (``x`` requires grad under autograd)."""
    training, autograd = SETTINGS[setting]
    dn.train(training)
    with torch.set_grad_enabled(autograd):
        return dn.forward_clamped(
            x.requires_grad_(True) if autograd else x, CLAMPS[clamp]
        )


@contextlib.contextmanager
def recorded_dn_ops():
    """The ``dn_mmdet::`` ops the profiler records in the block (sorted
    names, one entry per call), as a user sees them in a profile."""
    names: List[str] = []
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        yield names
    names.extend(
        sorted(
            e.name for e in prof.events() if e.name.startswith('dn_mmdet::')
        )
    )


#: The empty-batch cases empty_batch_worker.py runs: (name, layer options,
#: input shape, setting, clamp).
EMPTY_BATCH_CASES = [
    (
        f'{mode}-{setting}-{impl}',
        dict(mode=mode, impl=impl),
        (0, 16, 5, 5),
        setting,
        'relu6',
    )
    for mode in ('B', 'C1', 'C2')
    for setting in SETTINGS
    for impl in ('auto', 'composite')
] + [
    (
        'B-train-no-running-stats',
        dict(track_running_stats=False),
        (0, 16, 5, 5),
        'train',
        'none',
    ),
    (
        'B-eval-no-running-stats',
        dict(track_running_stats=False),
        (0, 16, 5, 5),
        'eval-no-grad',
        'none',
    ),
    (
        'B-train-cumulative',
        dict(momentum=None),
        (0, 16, 5, 5),
        'train',
        'none',
    ),
    ('B-train-empty-map', dict(), (2, 16, 0, 3), 'train', 'relu'),
    ('B-eval-empty-map', dict(), (2, 16, 0, 3), 'eval-no-grad', 'relu'),
]
