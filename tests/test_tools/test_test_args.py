"""tools/test.py: flags to config, with clear errors on bad input."""

import os.path as osp
from pathlib import Path

import pytest
import torch

CONFIG = (
    Path(__file__).resolve().parents[2]
    / 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save(dict(state_dict={}), path)
    return path


def _cfg(test_tool, *argv):
    return test_tool.build_config(test_tool.parse_args([str(CONFIG), *argv]))


def test_defaults(test_tool, ckpt):
    cfg = _cfg(test_tool, str(ckpt))
    assert cfg.load_from == str(ckpt)
    assert cfg.work_dir == osp.join('./work_dirs', CONFIG.stem)
    assert not cfg.default_hooks.visualization.get('draw', False)
    assert cfg.test_evaluator.type == 'CocoMetric'


def test_flags(test_tool, ckpt, tmp_path):
    cfg = _cfg(
        test_tool,
        str(ckpt),
        '--work-dir',
        str(tmp_path),
        '--show-dir',
        'vis',
        '--cfg-options',
        'test_dataloader.batch_size=1',
    )
    assert cfg.work_dir == str(tmp_path)
    assert cfg.default_hooks.visualization.draw
    assert cfg.default_hooks.visualization.test_out_dir == 'vis'
    assert cfg.test_dataloader.batch_size == 1


def test_missing_checkpoint_is_named(test_tool, tmp_path):
    missing = tmp_path / 'latest.pth'
    with pytest.raises(SystemExit) as info:
        test_tool.main([str(CONFIG), str(missing)])
    assert f'Checkpoint file {missing} does not exist' in str(info.value.code)


def test_missing_config_is_named(test_tool, ckpt, tmp_path):
    missing = tmp_path / 'cfg.py'
    with pytest.raises(SystemExit) as info:
        test_tool.main([str(missing), str(ckpt)])
    assert f'Config file {missing} does not exist' in str(info.value.code)


def test_out_must_be_a_pickle(test_tool, ckpt, capsys):
    with pytest.raises(SystemExit) as info:
        test_tool.parse_args([str(CONFIG), str(ckpt), '--out', 'res.json'])
    assert info.value.code == 2
    assert '--out must be a .pkl or .pickle file' in capsys.readouterr().err


def test_show_dir_needs_a_visualization_hook(test_tool, ckpt):
    with pytest.raises(RuntimeError, match='default_hooks.visualization'):
        _cfg(
            test_tool,
            str(ckpt),
            '--show-dir',
            'vis',
            '--cfg-options',
            'default_hooks.visualization=None',
        )
