"""The configs of a training and a test run, from what ``tools/train.py``
and ``tools/test.py`` take on their command lines.

The tools parse arguments and call :func:`build_train_cfg` or
:func:`build_test_cfg`; scripts and tests that build a run without a command
line call them directly.
"""

import logging
from typing import Optional

from mmengine.config import Config
from mmengine.device import get_device
from mmengine.logging import print_log

from .launch import (
    check_file,
    checkpoint_seed,
    cpu_has_native_bf16,
    default_work_dir,
    find_resume_checkpoint,
    load_config,
)

__all__ = ['build_train_cfg', 'build_test_cfg', 'is_detector']


def _set_work_dir(cfg: Config, config: str, work_dir: Optional[str]):
    """work_dir priority: argument > config > ./work_dirs/<config stem>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config)


def build_train_cfg(
    config: str,
    cfg_options: Optional[dict] = None,
    work_dir: Optional[str] = None,
    launcher: str = 'none',
    amp: bool = False,
    auto_scale_lr: bool = False,
    resume: Optional[str] = None,
) -> Config:
    """The training config: the file, then ``cfg_options``, then the rest.

    Args:
        config (str): Config file.
        cfg_options (dict, optional): ``--cfg-options`` items to merge.
        work_dir (str, optional): Work dir (default: the config's, else
            ``work_dirs/<config stem>``).
        launcher (str): Job launcher. Defaults to 'none'.
        amp (bool): Mixed precision: fp16 with dynamic loss scaling on an
            accelerator, bf16 autocast on the CPU. Defaults to False.
        auto_scale_lr (bool): Scale the lr by the total batch size over
            ``auto_scale_lr.base_batch_size``. Defaults to False.
        resume (str, optional): A checkpoint (path or URL) to resume from,
            or ``'auto'`` for the latest in the work dir (none there: start
            afresh). Defaults to None (no resuming).

    Returns:
        Config: The config to build the runner from.

    Raises:
        FileNotFoundError: Missing config file or ``resume`` checkpoint.
        pickle.UnpicklingError: A ``resume`` checkpoint that the
            weights-only loader refuses (read for its seed).
        ValueError: A ``cfg_options`` item that cannot be merged.
        RuntimeError: ``auto_scale_lr`` on a config without
            ``auto_scale_lr.base_batch_size``.
    """
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    _set_work_dir(cfg, config, work_dir)

    if amp:
        if get_device() == 'cpu':
            # AmpOptimWrapper needs an accelerator: bf16 autocast instead.
            cfg.optim_wrapper.type = 'BF16OptimWrapper'
            if not cpu_has_native_bf16():
                print_log(
                    '--amp: this CPU has no native bfloat16 (AVX512-BF16 or '
                    'AMX), so bf16 autocast trains several times slower '
                    'than float32 here; drop --amp unless you need bf16.',
                    logger='current',
                    level=logging.WARNING,
                )
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise RuntimeError(
                f'--auto-scale-lr needs auto_scale_lr.base_batch_size (the '
                f'total batch size the lr is set for) in {config}.'
            )
        cfg.auto_scale_lr.enable = True

    if resume is not None:
        resume_from = _resume_checkpoint(resume, cfg.work_dir)
        # As mmdet: a resumed run does not load ``load_from`` weights.
        cfg.resume = resume_from is not None
        cfg.load_from = resume_from
        if resume_from is not None:
            _reuse_checkpoint_seed(cfg, resume_from)
    return cfg


def _resume_checkpoint(resume: str, work_dir: str) -> Optional[str]:
    """The checkpoint ``resume`` means (None: start afresh)."""
    if resume == 'auto':
        found = find_resume_checkpoint(work_dir)
        if found is None:
            print_log(
                f'--resume: no checkpoint in {work_dir}; training from '
                'scratch.',
                logger='current',
                level=logging.WARNING,
            )
        return found
    if '://' in resume:  # a URL, fetched by mmengine
        return resume
    return check_file(resume, '--resume checkpoint')


def _reuse_checkpoint_seed(cfg: Config, checkpoint: str) -> None:
    """Give a resumed run without a configured seed its checkpoint's seed.

    mmengine restores the seed on resume, but only after the data sampler was
    built with a fresh random one, so the data order would change. Setting it
    in the config up front keeps the order of the original run.
    """
    randomness = cfg.get('randomness') or {}
    if randomness.get('seed') is not None:
        return
    seed = checkpoint_seed(checkpoint)
    if seed is not None:
        cfg.randomness = dict(randomness, seed=seed)


def is_detector(cfg: Config) -> bool:
    """Whether ``cfg`` is an mmdet config (else an mmpretrain classifier)."""
    return cfg.get('default_scope', 'mmdet') == 'mmdet'


def build_test_cfg(
    config: str,
    checkpoint: str,
    cfg_options: Optional[dict] = None,
    work_dir: Optional[str] = None,
    launcher: str = 'none',
    show_dir: Optional[str] = None,
) -> Config:
    """The test config: the file, then ``cfg_options``, then the rest.

    Args:
        config (str): Config file.
        checkpoint (str): Checkpoint to evaluate (path or URL).
        cfg_options (dict, optional): ``--cfg-options`` items to merge.
        work_dir (str, optional): Work dir (default: the config's, else
            ``work_dirs/<config stem>``).
        launcher (str): Job launcher. Defaults to 'none'.
        show_dir (str, optional): Save painted predictions here (relative
            paths under ``<work_dir>/<timestamp>/``): turns on the config's
            visualization hook.

    Returns:
        Config: The config to build the runner from.

    Raises:
        FileNotFoundError: Missing config or checkpoint file.
        ValueError: A ``cfg_options`` item that cannot be merged.
        RuntimeError: ``show_dir`` without a visualization hook.
    """
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    _set_work_dir(cfg, config, work_dir)
    if '://' not in checkpoint:  # URLs are fetched by mmengine
        check_file(checkpoint, 'Checkpoint file')
    cfg.load_from = checkpoint

    if show_dir is not None:
        hooks = cfg.get('default_hooks') or {}
        if not hooks.get('visualization'):
            raise RuntimeError(
                f'--show-dir needs default_hooks.visualization (e.g. '
                f"dict(type='DetVisualizationHook')) in {config}."
            )
        if is_detector(cfg):
            hooks.visualization.draw = True
            hooks.visualization.test_out_dir = show_dir
        else:  # mmpretrain's VisualizationHook
            hooks.visualization.enable = True
            hooks.visualization.out_dir = show_dir
    return cfg
