"""Mixed precision where mmengine's AmpOptimWrapper cannot go: the CPU."""

from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

# The root registry: found under any default scope (mmdet's falls back here).
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """An optimizer wrapper that runs forward and loss under bf16 autocast.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts a CUDA/NPU/MLU/MUSA device,
    so ``tools/train.py --amp`` selects this wrapper on a CPU-only machine.
    bfloat16 has float32's exponent range, so no loss scaling is needed
    (gradients cannot underflow the way fp16 ones do); parameters, optimizer
    state and norm statistics stay float32, as under ``AmpOptimWrapper``.

    Args:
        device_type (str): The autocast device. Default: 'cpu'.
        **kwargs: As :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, device_type: str = 'cpu', **kwargs):
        super().__init__(**kwargs)
        self.device_type = device_type

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
            device_type=self.device_type, dtype=torch.bfloat16
        ):
            yield
