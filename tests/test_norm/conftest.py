"""Fixtures of the norm tests (plain helpers are in dn_helpers.py)."""

import pytest

from dn_mmdet.ops import load_cpu_ops


@pytest.fixture(scope='session', autouse=True)
def cpu_ops():
    """This machine has a C++ compiler (mmcv is built from source), so DN's
    C++ ops must load; tests that expect them in a profile rely on it."""
    assert load_cpu_ops(), 'the DN CPU kernel did not build'
