"""Evaluate a detector or classifier checkpoint (mmdet 3.x's flags).

Examples::

    python tools/test.py CONFIG CHECKPOINT                 # prints COCO mAP
    python tools/test.py CLS_CONFIG CHECKPOINT             # prints top-1
    python tools/test.py CONFIG CHECKPOINT --out results.pkl
    python tools/test.py CONFIG CHECKPOINT --show-dir vis  # painted images
    bash tools/dist_test.sh CONFIG CHECKPOINT 2 [args]

The metrics come from the config's ``test_evaluator`` (``CocoMetric``:
pycocotools' bbox mAP; mmpretrain's ``Accuracy`` for classifier configs,
whose ``default_scope`` is 'mmpretrain'). ``--out`` adds mmdet's
``DumpDetResults`` (mmengine's ``DumpResults`` for classifiers);
``--show-dir`` turns on ``DetVisualizationHook`` (mmpretrain's
``VisualizationHook``), which saves the images under
``<work_dir>/<timestamp>/<show_dir>`` (or ``show_dir`` itself if absolute).
"""

import argparse
import os
import sys

# Painting needs no display: use matplotlib's file-only backend unless the
# user chose one.
os.environ.setdefault('MPLBACKEND', 'Agg')

from mmdet.utils import setup_cache_size_limit_of_dynamo  # noqa: E402

import dn_mmdet  # noqa: E402,F401  (registers everything)
from dn_mmdet.utils.compat import safe_checkpoint_loading  # noqa: E402
from dn_mmdet.utils.distributed import (  # noqa: E402
    destroy_process_group_on_exit,
    exit_finished_rank,
    setup_cpu_distributed,
)
from dn_mmdet.utils.launch import (  # noqa: E402
    CHECKPOINT_ERRORS,
    add_test_args,
    print_test_metrics,
)
from dn_mmdet.utils.run_config import build_test_cfg, is_detector  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector checkpoint'
    )
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_test_args(
        parser,
        work_dir_help='the dir to save evaluation results and logs '
        '(default: work_dirs/<config name>)',
    )
    parser.add_argument(
        '--show-dir',
        help='save painted predictions here (relative paths are under '
        '<work_dir>/<timestamp>/)',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace):
    """The test config of parsed arguments (see
    :func:`dn_mmdet.utils.run_config.build_test_cfg`, which raises the
    errors :func:`main` prints as one line)."""
    return build_test_cfg(
        args.config,
        args.checkpoint,
        cfg_options=args.cfg_options,
        work_dir=args.work_dir,
        launcher=args.launcher,
        show_dir=args.show_dir,
    )


def main(argv=None) -> dict:
    """Run the test; return the metrics (e.g. ``coco/bbox_mAP``)."""
    args = parse_args(argv)
    # As mmdet: honour DYNAMO_CACHE_SIZE_LIMIT for torch.compile'd models.
    setup_cache_size_limit_of_dynamo()
    # Gloo can abort a finished process at exit unless its group is gone.
    with destroy_process_group_on_exit():
        try:
            cfg = build_config(args)
            setup_cpu_distributed(cfg, args.launcher)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            sys.exit(f'tools/test.py: error: {err}')

        from mmdet.evaluation import DumpDetResults
        from mmengine.evaluator import DumpResults
        from mmengine.registry import RUNNERS
        from mmengine.runner import Runner

        if 'runner_type' in cfg:
            runner = RUNNERS.build(cfg)
        else:
            runner = Runner.from_cfg(cfg)
        if args.out is not None:
            dump = DumpDetResults if is_detector(cfg) else DumpResults
            runner.test_evaluator.metrics.append(dump(out_file_path=args.out))
        with safe_checkpoint_loading():
            try:
                metrics = runner.test()
            except CHECKPOINT_ERRORS as err:  # names the file and what to do
                sys.exit(f'tools/test.py: error: {err}')

        if runner.rank == 0:
            score_thr = (cfg.model.get('test_cfg') or {}).get('score_thr')
            print_test_metrics(
                metrics,
                'Test results:',
                f'model.test_cfg.score_thr={score_thr}',
            )
        return metrics


if __name__ == '__main__':
    main()
    exit_finished_rank()
