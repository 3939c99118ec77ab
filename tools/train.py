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
import os
import pickle
import sys

from mmdet.utils import setup_cache_size_limit_of_dynamo

import dn_mmdet  # noqa: F401  (registers everything, whatever the config)
from dn_mmdet.utils.compat import safe_checkpoint_loading
from dn_mmdet.utils.distributed import (
    destroy_process_group_on_exit,
    exit_finished_rank,
    is_main_process,
    setup_cpu_distributed,
)
from dn_mmdet.utils.launch import (
    CHECKPOINT_ERRORS,
    CfgOptionsAction,
)
from dn_mmdet.utils.run_config import build_train_cfg
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
    """The training config of parsed arguments (see
    :func:`dn_mmdet.utils.run_config.build_train_cfg`, which raises the
    errors :func:`main` prints as one line)."""
    return build_train_cfg(
        args.config,
        cfg_options=args.cfg_options,
        work_dir=args.work_dir,
        launcher=args.launcher,
        amp=args.amp,
        auto_scale_lr=args.auto_scale_lr,
        resume=args.resume,
    )


def main(argv=None):
    args = parse_args(argv)
    # As mmdet: honour DYNAMO_CACHE_SIZE_LIMIT for torch.compile'd models.
    setup_cache_size_limit_of_dynamo()
    # Gloo can abort a finished process at exit unless its group is gone.
    with destroy_process_group_on_exit():
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
    exit_finished_rank()
