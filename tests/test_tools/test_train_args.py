"""tools/train.py: its flags (parsed by the tool, the config built by
dn_mmdet.utils.run_config.build_train_cfg), with clear errors on bad
input."""

import logging
import os
import os.path as osp
from pathlib import Path

import pytest
import torch
from helpers import SHAPES_CONFIGS, cfg_options_dict
from mmengine.logging import MMLogger

from dn_mmdet.utils import run_config
from dn_mmdet.utils.run_config import build_train_cfg

CONFIG = SHAPES_CONFIGS['bn']


def _cfg(*options, **kwargs):
    """The training config of CONFIG with ``--cfg-options`` items and
    :func:`build_train_cfg` arguments."""
    if options:
        kwargs['cfg_options'] = cfg_options_dict(options)
    return build_train_cfg(str(CONFIG), **kwargs)


def test_the_tool_builds_the_package_config(train_tool, tmp_path):
    """The flags reach build_train_cfg (the rest of this file tests it)."""
    args = train_tool.parse_args(
        [
            str(CONFIG),
            '--work-dir',
            str(tmp_path),
            '--auto-scale-lr',
            '--cfg-options',
            'train_dataloader.batch_size=3',
        ]
    )
    cfg = train_tool.build_config(args)
    assert cfg.work_dir == str(tmp_path)
    assert cfg.auto_scale_lr.enable
    assert cfg.train_dataloader.batch_size == 3


def test_defaults():
    cfg = _cfg()
    assert cfg.work_dir == osp.join('./work_dirs', CONFIG.stem)
    assert cfg.launcher == 'none'
    assert not cfg.resume and cfg.load_from is None
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    # The runtime defaults of configs/_base_/default_runtime.py.
    ckpt = cfg.default_hooks.checkpoint
    assert ckpt.interval == 1 and ckpt.save_last and ckpt.max_keep_ckpts >= 2
    assert ckpt.backend_args == dict(backend='atomic_local')
    assert cfg.default_hooks.epoch_seed.type == 'EpochSeedHook'


def test_work_dir_flag_wins(tmp_path):
    cfg = _cfg(work_dir=str(tmp_path))
    assert cfg.work_dir == str(tmp_path)


def test_cfg_options_merge():
    cfg = _cfg(
        'train_dataloader.batch_size=3',
        'optim_wrapper.optimizer.lr=0.5',
        'randomness.seed=7',
        'model.bbox_head.anchor_generator.ratios=[[2],[3]]',
    )
    assert cfg.train_dataloader.batch_size == 3
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'  # siblings kept
    assert cfg.randomness.seed == 7
    assert cfg.model.bbox_head.anchor_generator.ratios == [[2], [3]]


def test_config_text_is_the_config_without_yapf(tmp_path):
    """The text a run writes (its log, its work dir's copy, each
    checkpoint's meta) reads back as the same config, merged options
    included; it is mmengine's unformatted text, not yapf's."""
    from mmengine.config import Config

    cfg = _cfg('train_dataloader.batch_size=3', work_dir=str(tmp_path))
    dumped = tmp_path / 'dumped.py'
    cfg.dump(str(dumped))
    assert dumped.read_text() == cfg.pretty_text
    assert Config.fromfile(str(dumped)).to_dict() == cfg.to_dict()
    assert cfg.train_dataloader.batch_size == 3
    assert cfg.filename == str(CONFIG)
    assert cfg.text == Config.fromfile(str(CONFIG)).text
    yapf_text = Config(cfg.to_dict()).pretty_text
    assert cfg.pretty_text != yapf_text
    assert Config.fromstring(yapf_text, '.py').to_dict() == cfg.to_dict()


@pytest.mark.parametrize('item', ['train_dataloader.batch_size', '=3'])
def test_malformed_cfg_option_is_a_usage_error(train_tool, capsys, item):
    with pytest.raises(SystemExit) as info:
        train_tool.parse_args([str(CONFIG), '--cfg-options', item])
    assert info.value.code == 2
    assert f'expected KEY=VALUE, got {item!r}' in capsys.readouterr().err


def test_unmergeable_cfg_option_names_it():
    with pytest.raises(ValueError, match='optim_wrapper.optimizer.lr.x=1'):
        _cfg('optim_wrapper.optimizer.lr.x=1')


def test_missing_config_is_named(train_tool, tmp_path, capsys):
    missing = tmp_path / 'nope.py'
    with pytest.raises(SystemExit) as info:
        train_tool.main([str(missing)])
    assert str(missing) in str(info.value.code)
    assert 'does not exist' in str(info.value.code)


def test_amp_selects_the_wrapper_for_the_device(monkeypatch):
    monkeypatch.setattr(run_config, 'get_device', lambda: 'cpu')
    cfg = _cfg(amp=True)
    assert cfg.optim_wrapper.type == 'BF16OptimWrapper'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    monkeypatch.setattr(run_config, 'get_device', lambda: 'cuda')
    cfg = _cfg(amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'


@pytest.mark.parametrize('native', [True, False])
def test_amp_on_a_cpu_without_native_bf16_warns(monkeypatch, native):
    # Measured here (AVX2, no AVX512-BF16): a bf16 training step of the
    # shapes SSDLite is 5x slower than float32 (README, "Mixed precision").
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    monkeypatch.setattr(run_config, 'get_device', lambda: 'cpu')
    monkeypatch.setattr(run_config, 'cpu_has_native_bf16', lambda: native)
    try:
        _cfg(amp=True)
    finally:
        logger.removeHandler(handler)
    warned = [r for r in records if 'no native bfloat16' in r.getMessage()]
    assert len(warned) == (0 if native else 1)


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    from dn_mmdet.utils.launch import cpu_has_native_bf16

    flags = Path('/proc/cpuinfo').read_text().split()
    assert cpu_has_native_bf16() == bool(
        {'avx512_bf16', 'amx_tile'} & set(flags)
    )


def test_auto_scale_lr(tmp_path):
    assert not _cfg().auto_scale_lr.enable
    assert _cfg(auto_scale_lr=True).auto_scale_lr.enable
    bare = tmp_path / 'bare.py'
    bare.write_text(
        f"_base_ = '{CONFIG}'\nauto_scale_lr = dict(_delete_=True,"
        ' enable=False)\n'
    )
    with pytest.raises(RuntimeError, match='auto_scale_lr.base_batch_size'):
        build_train_cfg(str(bare), auto_scale_lr=True)


def test_auto_scale_lr_without_the_setting_is_a_usage_error(train_tool):
    # auto_scale_lr=None used to end in "TypeError: argument of type
    # 'NoneType' is not iterable".
    with pytest.raises(SystemExit) as info:
        train_tool.main(
            [
                str(CONFIG),
                '--auto-scale-lr',
                '--cfg-options',
                'auto_scale_lr=None',
            ]
        )
    assert str(info.value.code).startswith(
        'tools/train.py: error: --auto-scale-lr needs '
        'auto_scale_lr.base_batch_size'
    )


def test_resume_with_path(tmp_path):
    ckpt = tmp_path / 'epoch_3.pth'
    torch.save(dict(meta=dict(seed=11), state_dict={}), ckpt)
    cfg = _cfg(resume=str(ckpt))
    assert cfg.resume and cfg.load_from == str(ckpt)
    # No seed configured: the checkpoint's seed is reused (data order).
    assert cfg.randomness.seed == 11
    cfg = _cfg('randomness.seed=5', resume=str(ckpt))
    assert cfg.randomness.seed == 5


def test_resume_with_missing_path_is_named(tmp_path):
    missing = tmp_path / 'epoch_9.pth'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        _cfg(resume=str(missing))


def test_resume_from_a_truncated_checkpoint_is_a_usage_error(
    train_tool, tmp_path
):
    ckpt = tmp_path / 'epoch_3.pth'
    torch.save(dict(meta=dict(seed=11), state_dict={}), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(SystemExit) as info:
        train_tool.main([str(CONFIG), '--resume', str(ckpt)])
    assert str(info.value.code).startswith(
        f'tools/train.py: error: Cannot read checkpoint {ckpt}: the file '
        '(200 bytes) is truncated or corrupt'
    )


def _work_dir_with(tmp_path, names, last=None):
    for name in names:
        torch.save(dict(meta=dict(seed=1), state_dict={}), tmp_path / name)
    if last is not None:
        (tmp_path / 'last_checkpoint').write_text(last)
    return tmp_path


def test_resume_without_path_uses_last_checkpoint(train_tool, tmp_path):
    """``--resume`` without a path means ``resume='auto'``."""
    assert train_tool.parse_args([str(CONFIG), '--resume']).resume == 'auto'
    work_dir = _work_dir_with(
        tmp_path,
        ['epoch_1.pth', 'epoch_2.pth'],
        last=str(tmp_path / 'epoch_1.pth'),
    )
    cfg = _cfg(resume='auto', work_dir=str(work_dir))
    assert cfg.resume and cfg.load_from == str(work_dir / 'epoch_1.pth')


@pytest.mark.parametrize('last', ['', '/gone/epoch_2.pth', None])
def test_resume_without_path_survives_a_bad_record(tmp_path, last):
    """An empty ``last_checkpoint`` (a crash while writing it), one naming a
    moved work_dir, or none at all: the newest checkpoint present is used."""
    work_dir = _work_dir_with(
        tmp_path,
        ['epoch_2.pth', 'epoch_10.pth', 'best_x_epoch_3.pth'],
        last=last,
    )
    cfg = _cfg(resume='auto', work_dir=str(work_dir))
    expected = 'epoch_2.pth' if last == '/gone/epoch_2.pth' else 'epoch_10.pth'
    assert cfg.load_from == str(work_dir / expected)


def test_resume_without_checkpoint_starts_from_scratch(tmp_path):
    cfg = _cfg(resume='auto', work_dir=str(tmp_path))
    assert not cfg.resume and cfg.load_from is None


def test_launcher_and_local_rank(train_tool, monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    args = train_tool.parse_args(
        [str(CONFIG), '--launcher', 'pytorch', '--local-rank', '1']
    )
    assert args.launcher == 'pytorch'
    assert os.environ['LOCAL_RANK'] == '1'
    with pytest.raises(SystemExit):
        train_tool.parse_args([str(CONFIG), '--launcher', 'ssh'])


def test_default_hooks_can_be_disabled():
    """``default_hooks.NAME=None`` disables any default hook (mmengine only
    accepts None for its own six)."""
    cfg = _cfg(
        'default_hooks.epoch_seed=None',
        'default_hooks.visualization=None',
    )
    assert 'epoch_seed' not in cfg.default_hooks
    assert 'visualization' not in cfg.default_hooks
    assert 'checkpoint' in cfg.default_hooks


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU case')
def test_cpu_distributed_needs_torchrun(train_tool, tmp_path):
    with pytest.raises(SystemExit) as info:
        train_tool.main(
            [str(CONFIG), '--launcher', 'slurm', '--work-dir', str(tmp_path)]
        )
    assert '--launcher slurm needs CUDA' in str(info.value.code)
