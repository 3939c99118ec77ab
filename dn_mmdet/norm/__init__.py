"""Normalisation layers: Dynamic Normalization and its parts.

``reference.py`` (the straightforward DN that tests and the benchmark hold
the layer to) is not imported here: nothing in the package uses it.
"""
from .base import NormLayer, name_norm_layers
from .dynamic_norm import DynamicNorm2d
from .sc_module import GroupedFC, SCModule, fc2_groups

__all__ = [
    'NormLayer', 'name_norm_layers', 'DynamicNorm2d', 'SCModule', 'GroupedFC',
    'fc2_groups'
]
