from .bf16_optim_wrapper import BF16OptimWrapper
from .plain_param_groups_constructor import (
    PlainParamGroupsOptimWrapperConstructor,
)

__all__ = ['BF16OptimWrapper', 'PlainParamGroupsOptimWrapperConstructor']
