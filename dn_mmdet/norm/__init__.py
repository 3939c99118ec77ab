"""Normalisation layers: Dynamic Normalization and its parts, the related
normalisers SN and MABN (with MABN's weight-centred conv), and the paper's
SE-then-BN baseline (``SEBN``).

``reference.py`` (the straightforward DN that tests and the benchmark hold
the layer to) is not imported here: nothing in the package uses it.
"""

from .base import NormLayer, name_norm_layers
from .cen_conv import CenConv2d
from .dynamic_norm import DynamicNorm2d
from .mabn import MABN2d
from .norm_act_fusion import FusedNormActConvModule, fuse_norm_act
from .sc_module import GroupedFC, SCModule, fc2_groups
from .se_batch_norm import SEBatchNorm2d
from .switchable_norm import SwitchNorm2d

__all__ = [
    'NormLayer',
    'name_norm_layers',
    'DynamicNorm2d',
    'fuse_norm_act',
    'FusedNormActConvModule',
    'SCModule',
    'GroupedFC',
    'fc2_groups',
    'SwitchNorm2d',
    'MABN2d',
    'CenConv2d',
    'SEBatchNorm2d',
]
