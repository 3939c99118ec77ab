"""Fixtures of the tools tests (helpers are in tool_helpers.py)."""
import pytest

from tool_helpers import load_tool


@pytest.fixture(scope='session')
def train_tool():
    return load_tool('train')


@pytest.fixture(scope='session')
def test_tool():
    return load_tool('test')


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory, shapes_generator):
    """A 12 + 4 image shapes data set (COCO files), made once a session."""
    root = tmp_path_factory.mktemp('shapes')
    shapes_generator.ensure_shapes_dataset(
        str(root), num_train=12, num_val=4, seed=0)
    return root
