"""Normalisation layers: Dynamic Normalization and its parts, and the
related normalisers SN and MABN (with MABN's weight-centred conv)."""
from .cen_conv import CenConv2d
from .dynamic_norm import DynamicNorm2d
from .mabn import MABN2d
from .reference import dynamic_norm_reference
from .sc_module import GroupedFC, SCModule, fc2_groups
from .switchable_norm import SwitchNorm2d

__all__ = [
    'DynamicNorm2d', 'SCModule', 'GroupedFC', 'fc2_groups',
    'dynamic_norm_reference', 'SwitchNorm2d', 'MABN2d', 'CenConv2d'
]
