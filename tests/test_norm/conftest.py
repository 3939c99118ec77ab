"""Fixtures of the norm tests (plain helpers are in dn_helpers.py)."""
import pytest

from dn_helpers import CountingKernel

from dn_mmdet.ops import dn_cpu


@pytest.fixture
def counted_kernel(monkeypatch):
    """The C++ kernel, counting its calls."""
    assert dn_cpu.load(), f'the DN CPU kernel did not build: {dn_cpu.error}'
    counter = CountingKernel(dn_cpu.module)
    monkeypatch.setattr(dn_cpu, 'module', counter)
    return counter


@pytest.fixture
def chosen_paths(monkeypatch):
    """The paths ``DynamicNorm2d._select_path`` chooses, in call order."""
    from dn_mmdet.norm import DynamicNorm2d
    paths = []
    select = DynamicNorm2d._select_path

    def spy(self, *args):
        paths.append(select(self, *args))
        return paths[-1]

    monkeypatch.setattr(DynamicNorm2d, '_select_path', spy)
    return paths
