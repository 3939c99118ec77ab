"""tools/test.py: its flags (parsed by the tool, the config built by
dn_mmdet.utils.run_config.build_test_cfg), with clear errors on bad
input."""

import os.path as osp

import pytest
import torch
from helpers import SHAPES_CONFIGS, cfg_options_dict

from dn_mmdet.utils.run_config import build_test_cfg

CONFIG = SHAPES_CONFIGS['bn']


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / 'model.pth'
    torch.save(dict(state_dict={}), path)
    return path


def test_defaults(ckpt):
    cfg = build_test_cfg(str(CONFIG), str(ckpt))
    assert cfg.load_from == str(ckpt)
    assert cfg.work_dir == osp.join('./work_dirs', CONFIG.stem)
    assert not cfg.default_hooks.visualization.get('draw', False)
    assert cfg.test_evaluator.type == 'CocoMetric'


def test_flags(test_tool, ckpt, tmp_path):
    """The tool's flags reach build_test_cfg."""
    cfg = test_tool.build_config(
        test_tool.parse_args(
            [
                str(CONFIG),
                str(ckpt),
                '--work-dir',
                str(tmp_path),
                '--show-dir',
                'vis',
                '--cfg-options',
                'test_dataloader.batch_size=1',
            ]
        )
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


def test_show_dir_needs_a_visualization_hook(ckpt):
    with pytest.raises(RuntimeError, match='default_hooks.visualization'):
        build_test_cfg(
            str(CONFIG),
            str(ckpt),
            cfg_options_dict(['default_hooks.visualization=None']),
            show_dir='vis',
        )


def test_the_test_tools_share_their_flags(test_tool, load_tool, capsys):
    """tools/test.py and tools/deployment/test_onnx.py take --out and
    --cfg-options from one place (dn_mmdet.utils.launch.add_test_args):
    the same help, the same usage error."""
    onnx_tool = load_tool('deployment/test_onnx')
    helps = []
    for tool in (test_tool, onnx_tool):
        with pytest.raises(SystemExit):
            tool.parse_args(['--help'])
        helps.append(' '.join(capsys.readouterr().out.split()))
    for text in (
        '--out OUT dump the predictions to this pickle file (.pkl / .pickle)',
        '--cfg-options CFG_OPTIONS [CFG_OPTIONS ...] override config '
        'settings, KEY=VALUE pairs, e.g. test_dataloader.batch_size=1; no '
        'spaces in a pair',
    ):
        assert text in helps[0] and text in helps[1]
    args = onnx_tool.parse_args(['c.py', 'm.onnx', '--out', 'res.pickle'])
    assert args.out == 'res.pickle' and args.work_dir is None
    with pytest.raises(SystemExit) as info:
        onnx_tool.parse_args(['c.py', 'm.onnx', '--out', 'res.json'])
    assert info.value.code == 2
    assert (
        '--out must be a .pkl or .pickle file, got res.json'
        in capsys.readouterr().err
    )


def test_print_test_metrics(capsys):
    from dn_mmdet.utils.launch import print_test_metrics

    print_test_metrics(
        {'coco/bbox_mAP': 0.25, 'coco/bbox_mAP_50': 0.5}, 'Test results:', ''
    )
    assert capsys.readouterr().out.splitlines() == [
        '',
        'Test results:',
        '  coco/bbox_mAP     0.25',
        '  coco/bbox_mAP_50  0.5',
        'bbox mAP: 0.2500',
    ]
    print_test_metrics({'accuracy/top1': 87.5}, 'Test results:', '')
    assert capsys.readouterr().out.endswith('top-1 accuracy: 87.50%\n')
    print_test_metrics({}, 'Test results:', 'model.test_cfg.score_thr=0.02')
    assert capsys.readouterr().out.splitlines()[-1] == (
        'bbox mAP: 0.0000 (no detection scored above '
        'model.test_cfg.score_thr=0.02)'
    )
