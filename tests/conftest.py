"""Fixtures shared by the whole suite."""
import importlib.util
import sys
from pathlib import Path

import pytest

# Before any test module imports mmpretrain (which imports torchvision): see
# dn_mmdet.utils.torchvision_compat.
import dn_mmdet  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def load_tool(path: str):
    """``tools/<path>.py`` as a module (tools are scripts, not a package).

    Registered in ``sys.modules`` (as ``tools_<stem>``) so that what it
    defines pickles, e.g. into the generator's worker processes.
    """
    name = f'tools_{Path(path).stem}'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / 'tools' / f'{path}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope='session')
def get_flops():
    """``tools/analysis/get_flops.py``, the project's size tool."""
    return load_tool('analysis/get_flops')
