"""Normalisation layers: Dynamic Normalization and its parts."""
from .dynamic_norm import DynamicNorm2d
from .reference import dynamic_norm_reference
from .sc_module import GroupedFC, SCModule, fc2_groups

__all__ = [
    'DynamicNorm2d', 'SCModule', 'GroupedFC', 'fc2_groups',
    'dynamic_norm_reference'
]
