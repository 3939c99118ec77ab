"""An optimizer wrapper constructor whose parameter groups are plain dicts."""

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PlainParamGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, with each parameter group a ``dict``.

    With a ``paramwise_cfg`` mmengine passes the groups through the
    optimizer's config, which turns each into a ``ConfigDict``;
    ``torch.compile`` of the runner's ``train_step`` (``compile=...`` in a
    config) then fails inside the optimizer's ``step`` (dynamo cannot trace
    a ``ConfigDict`` group). The groups hold the same keys and values: the
    optimizer computes exactly what it did.

    Example::

        optim_wrapper = dict(
            constructor='PlainParamGroupsOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=5e-3),
            paramwise_cfg=dict(norm_decay_mult=0.0))
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        groups = optim_wrapper.optimizer.param_groups
        groups[:] = [dict(group) for group in groups]
        return optim_wrapper
