"""Run a normaliser study: normalisers x batch sizes x lr multipliers x seeds.

    python tools/analysis/norm_study.py SPEC                # run (resumable)
    python tools/analysis/norm_study.py SPEC --quick        # 'quick' preset
    python tools/analysis/norm_study.py SPEC --dry-run      # list the runs
    python tools/analysis/norm_study.py SPEC --report-only  # tables, plots

``SPEC`` is a study config such as
``configs/studies/norm_study_ssdlite_shapes.py``.

The study tests the DN paper's comparative claims (Tables 1, 3, 4, 8 and
Figure 3): DN-B against BN (and SE-BN, GN, SN, MABN) at the recipe's
settings, at smaller batches and at higher learning rates. A *spec* (an
mmengine config under ``configs/studies/``) names a base training config
(any mmdet or mmpretrain config), the normalisers
(``configs/studies/_base_/norms.py``) and the grid; every run is one process
of ``tools/train.py`` (``tools/dist_train.sh`` with ``gpus`` > 1), so a GPU
user runs the same study on COCO or ImageNet-100 by pointing the spec at
that base config.

The grid. ``grid='axes'`` (default) varies one factor at a time around the
reference point (the first batch size, the first lr multiplier), as the
paper does: the batch sizes at the reference lr (Table 4) and the lr
multipliers at the reference batch (Table 8); ``norm_settings`` limits a
normaliser to the batch sweep, the lr sweep or the reference alone;
``grid='full'`` runs every combination. Runs are ordered seed by seed, so a
study stopped early has every cell with fewer seeds rather than some cells
with all.

Learning rate. The multiplier scales the base config's lr (``lr_key``). With
``lr_scaling='none'`` (default) the lr does not follow the batch size (the
paper's small-batch rows keep the recipe's lr); ``'linear'`` multiplies it
by batch / reference batch.

Resume. Run the same command again: finished, collapsed and diverged runs
are kept, an interrupted run resumes from its last checkpoint, a failed one
is retried. Killing the study (even with SIGKILL) stops its training
processes; a run whose earlier training still lives is not started beside
it.

Outputs in the study's directory (``work_dirs/norm_study/<spec>[_<preset>]``
or ``--work-dir``): ``runs/<run>/`` (each run's work dir and state),
``results.json`` (the spec, every run's record with its per-epoch curve,
command, wall and CPU time), ``results.csv``, ``table.md`` and the plots of
``norm_study_report.py``. The library is ``dn_mmdet.analysis.study``.
"""

import argparse
import os.path as osp
import sys

from dn_mmdet.analysis.study import (
    SpecError,
    Study,
    StudyError,
    StudyRunner,
    Terminated,
    train_command,
)
from dn_mmdet.analysis.study.records import has_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Run a normaliser study (normalisers x batch sizes x lr '
        'multipliers x seeds), resumably, and write its results, table and '
        'plots'
    )
    parser.add_argument('spec', help='study spec (configs/studies/*.py)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        '--preset', help="a preset of the spec's `presets` (e.g. quick)"
    )
    group.add_argument(
        '--quick',
        action='store_const',
        const='quick',
        dest='preset',
        help='the `quick` preset',
    )
    parser.add_argument(
        '--work-dir',
        help='study directory (default: '
        'work_dirs/norm_study/<spec>[_<preset>])',
    )
    parser.add_argument('--norms', nargs='+', help='only these normalisers')
    parser.add_argument(
        '--batch-sizes', nargs='+', type=int, help='override batch_sizes'
    )
    parser.add_argument(
        '--lr-mults', nargs='+', type=float, help='override lr_mults'
    )
    parser.add_argument('--seeds', nargs='+', type=int, help='override seeds')
    parser.add_argument(
        '--threads',
        type=int,
        help="override the spec's threads: CPU threads of "
        'each training process (OMP_NUM_THREADS)',
    )
    parser.add_argument(
        '--progress-interval',
        type=float,
        default=60.0,
        help='seconds between progress lines while a run trains',
    )
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the runs and their commands, train nothing',
    )
    parser.add_argument(
        '--report-only',
        action='store_true',
        help='write results, table and plots from the runs '
        'in the study directory, train nothing',
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {
        key: getattr(args, key)
        for key in ('norms', 'batch_sizes', 'lr_mults', 'seeds', 'threads')
        if getattr(args, key) is not None
    }
    try:
        study = Study(args.spec, args.preset, overrides)
        out_dir = args.work_dir or osp.join(
            'work_dirs', 'norm_study', study.name
        )
        runner = StudyRunner(
            study, out_dir, progress_interval=args.progress_interval
        )
        if args.dry_run:
            for run in study.runs():
                run_dir = runner.run_dir(run)
                print(
                    ' '.join(
                        train_command(
                            study,
                            runner.base,
                            run,
                            run_dir,
                            has_checkpoint(run_dir),
                        )
                    )
                )
            print(f'{len(study.runs())} runs')
            return 0
        if args.report_only:
            if not osp.isdir(osp.join(runner.out_dir, 'runs')):
                raise StudyError(
                    f'{runner.out_dir} has no runs/ folder: there is '
                    'nothing to report from, and writing would replace '
                    'its results with pending rows. Redraw tables and '
                    'plots from its results.json with '
                    'tools/analysis/norm_study_report.py instead.'
                )
            runner.write_results(plots=True)
            print(f'results in {runner.out_dir}')
            return 0
        failed = runner.run()
    except (SpecError, StudyError) as err:
        sys.exit(f'norm_study: error: {err}')
    except (KeyboardInterrupt, Terminated):
        print(
            '[norm_study] interrupted; run the same command again to resume',
            flush=True,
        )
        return 130
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
