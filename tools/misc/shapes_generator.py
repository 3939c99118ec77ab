"""Moved to :mod:`dn_mmdet.datasets.shapes_generator`.

Kept only while ``tests/conftest.py``'s ``shapes_generator`` fixture loads
this file; remove it when the fixture imports the package module.
"""

from dn_mmdet.datasets.shapes_generator import *  # noqa: F401,F403
from dn_mmdet.datasets.shapes_generator import __all__  # noqa: F401
