"""Train a detector or classifier with dn_mmdet (mmdet 3.x's flags).

Examples::

    python tools/train.py configs/ssdlite/<config>.py
    python tools/train.py configs/mobilenet_v2/<config>.py   # mmpretrain
    python tools/train.py CONFIG --work-dir work_dirs/run1 --resume
    python tools/train.py CONFIG --cfg-options train_dataloader.batch_size=8
    bash tools/dist_train.sh CONFIG 2 [args]   # torchrun, --launcher pytorch

``--resume`` without a path continues from the latest checkpoint in the work
directory (and starts from scratch if there is none); with a path it
continues from that checkpoint.
"""

import argparse
import contextlib
import logging
import os
import pickle
import sys

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.device import get_device
from mmengine.logging import print_log

import dn_mmdet  # noqa: F401  (registers everything, whatever the config)
from dn_mmdet.utils.compat import safe_checkpoint_loading
from dn_mmdet.utils.launch import (
    CHECKPOINT_ERRORS,
    CfgOptionsAction,
    check_file,
    checkpoint_seed,
    cpu_has_native_bf16,
    default_work_dir,
    find_resume_checkpoint,
    is_main_process,
    load_config,
    setup_cpu_distributed,
)
from dn_mmdet.utils.work_dir_lock import WorkDirInUseError, WorkDirLock


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Train a detector (mmdet) or classifier (mmpretrain)'
    )
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--work-dir',
        help='the dir to save logs and models '
        '(default: work_dirs/<config name>)',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision: fp16 with dynamic loss scaling on '
        'a GPU, bf16 autocast on the CPU',
    )
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the total batch size over '
        'auto_scale_lr.base_batch_size',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint or, without a path, from the '
        'latest checkpoint in the work dir',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config settings, KEY=VALUE pairs, e.g. '
        'train_dataloader.batch_size=8 or "key=[a,b]"; no spaces in a pair',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace):
    """The training config: the file, then ``--cfg-options``, then flags.

    Args:
        args (argparse.Namespace): Output of :func:`parse_args`.

    Returns:
        Config: The config to build the runner from.

    Raises:
        FileNotFoundError: Missing config file or ``--resume`` checkpoint.
        pickle.UnpicklingError: A ``--resume`` checkpoint that the
            weights-only loader refuses (read for its seed).
        ValueError: A ``--cfg-options`` item that cannot be merged.
        RuntimeError: ``--auto-scale-lr`` on a config without
            ``auto_scale_lr.base_batch_size``.
    """
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher

    # work_dir priority: CLI > config > ./work_dirs/<config stem>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)

    if args.amp:
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

    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise RuntimeError(
                f'--auto-scale-lr needs auto_scale_lr.base_batch_size (the '
                f'total batch size the lr is set for) in {args.config}.'
            )
        cfg.auto_scale_lr.enable = True

    if args.resume is not None:
        resume_from = _resume_checkpoint(args.resume, cfg.work_dir)
        # As mmdet: a resumed run does not load ``load_from`` weights.
        cfg.resume = resume_from is not None
        cfg.load_from = resume_from
        if resume_from is not None:
            _reuse_checkpoint_seed(cfg, resume_from)
    return cfg


def _resume_checkpoint(resume: str, work_dir: str):
    """The checkpoint ``--resume [PATH]`` means (None: start afresh)."""
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


def _reuse_checkpoint_seed(cfg, checkpoint: str) -> None:
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


def main(argv=None):
    args = parse_args(argv)
    # As mmdet: honour DYNAMO_CACHE_SIZE_LIMIT for torch.compile'd models.
    setup_cache_size_limit_of_dynamo()
    try:
        cfg = build_config(args)
        setup_cpu_distributed(cfg, args.launcher)
    except (
        FileNotFoundError,
        ValueError,
        RuntimeError,
        pickle.UnpicklingError,
    ) as err:
        sys.exit(f'tools/train.py: error: {err}')

    # One run per work dir, held until this process ends; the other ranks
    # of a distributed run share the work dir of rank 0.
    lock = WorkDirLock(cfg.work_dir) if is_main_process() else None
    try:
        if lock is not None:
            lock.acquire()
    except WorkDirInUseError as err:
        sys.exit(f'tools/train.py: error: {err}')

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    with lock or contextlib.nullcontext(), safe_checkpoint_loading():
        if 'runner_type' in cfg:
            runner = RUNNERS.build(cfg)
        else:
            runner = Runner.from_cfg(cfg)
        try:
            runner.train()
        except CHECKPOINT_ERRORS as err:  # load_from / resume: named file
            sys.exit(f'tools/train.py: error: {err}')


if __name__ == '__main__':
    main()
