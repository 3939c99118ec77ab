"""Benchmark BN against DN-B in the models users run, over a sweep of sizes.

Measures side by side, each (model, batch, size, variant) in a fresh process
(so that peak memory is its own), ``--runs`` times, interleaved; or, with
``--interleave``, all variants of a case in one process, their timed steps
alternating (steadier ratios; no peak memory):

* ``layer``: one norm layer's forward + backward, on the input shapes of
  all 52 norm layers of MobileNetV2 at the given size (summed);
* backbones, a training step (forward, backward, SGD step) and inference
  (``torch.no_grad``, eval mode), with the variant as their ``norm_cfg``
  (``dict(type='DN', r=16, g='oup')`` etc., built through mmengine's
  registry as in a user's config):

  - ``mobilenetv2dn``: the project's ``MobileNetV2DN``, the backbone of
    ``--config`` (FNA's taps);
  - ``mmdet-mobilenetv2``: mmdet's ``MobileNetV2`` (``out_indices=(4, 7)``);
  - ``resnet18``, ``resnet50``: mmdet's ``ResNet`` (all four stages out,
    ``norm_eval=False``, nothing frozen);

* detectors, one training iteration (losses with target assignment and hard
  negative mining, backward, step) and inference of the network (backbone,
  neck, head; no NMS), with the variant in the backbone:

  - ``ssdlite``: the SSDLite of ``--config`` (default: the paper's);
  - ``ssdlite-shapes``: the shapes detector of the main job
    (``configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py``,
    5 classes, anchors for 128 px).

For every model it prints a table (rows: batch x size x variant) of median
times, the ratio to BN (with ``--interleave``: the median over runs of each
worker's own ratio, BN's steps timed beside the variant's) and the peak
memory of the timed steps (CPU: peak RSS above the RSS before them; CUDA:
``max_memory_allocated`` above the memory in use before them, timed with
``torch.cuda.synchronize``), then a summary line per model: the worst
(largest) DN/BN ratio of training time, inference time and training peak
memory over the sweep, with the case where it occurs.
Examples::

    # the sweep (CPU time of one thread: steady on a shared machine)
    python tools/analysis/benchmark_norm.py --models mmdet-mobilenetv2 \
        resnet18 resnet50 mobilenetv2dn ssdlite --batch-sizes 2 4 8 16 \
        --sizes 128 224 320 640 --variants bn dnb-r16-goup \
        --timer cpu --threads 1 --runs 3 --repeat 5 --keep-freed-memory
    # the same in wall time with all threads (torch's default)
    python tools/analysis/benchmark_norm.py ... --timer wall
    # one size
    python tools/analysis/benchmark_norm.py --batch-sizes 8 --threads 2 \
        --runs 3

CPU timings are at the mercy of page faults (glibc returns large freed
blocks to the system, and whether a process re-faults its activations is
chance): ``--keep-freed-memory`` takes them out, ``--timer cpu`` with
``--threads 1`` is steadiest on a shared or virtual machine, and ``--runs``
repeats every worker and reports medians (README, "Performance").

Variants are norm configs of the backbone: ``bn``; ``dnb-r16-g1`` and
``dnb-r16-goup`` (the fast DN, the default); their ``-reference`` versions
(the straightforward DN: BN, pooling pass, SC-Module, multiply-add, all
through autograd) show what the fast path saves. ``sn`` (Switchable
Normalization, its fast path) and ``sn-plain`` (the straightforward one),
``mabn`` (MABN; ``mabn-cenconv`` also centres the backbone's conv weights,
the MABN paper's pairing) and ``gn`` (Group Normalization, 8 groups) put the
other normalisers beside them. The summary's first line per model is the
worst over the DN variants (``dnb-*``, not the references); every other
non-BN variant gets a line of its own.

The measuring is done by :mod:`dn_mmdet.analysis.benchmark`.
"""

import argparse
import os.path as osp
import sys

from dn_mmdet.analysis.benchmark import (
    DEFAULT_CONFIG,
    DEFAULT_MODELS,
    DEFAULT_VARIANTS,
    MIN_SIZE,
    MODELS,
    VARIANTS,
    Sweep,
    WorkerError,
    WorkerSettings,
    dn_kernel_status,
    format_sweep,
    parse_dims,
    run_sweep,
    write_json,
)
from dn_mmdet.utils.cli_args import nonnegative_int, positive_int

#: The models built from --config (the lone layers take its shapes).
CONFIG_MODELS = {'layer', 'mobilenetv2dn', 'ssdlite'}


def parse_args(argv=None):
    # No abbreviations: --batch-size and --size, the removed forms of
    # --batch-sizes and --sizes, would still be taken as them.
    parser = argparse.ArgumentParser(
        description='Benchmark BN vs DN-B (norm layers, mmdet and project '
        'backbones, SSDLite) over batch sizes and input sizes',
        allow_abbrev=False,
    )
    parser.add_argument(
        '--models',
        nargs='+',
        choices=list(MODELS),
        default=DEFAULT_MODELS,
        help='what to measure: '
        + '; '.join(f'{k}: {v}' for k, v in MODELS.items())
        + f' (default: {" ".join(DEFAULT_MODELS)})',
    )
    parser.add_argument(
        '--config',
        default=DEFAULT_CONFIG,
        help='detector config of mobilenetv2dn and ssdlite '
        '(its backbone norm is replaced)',
    )
    parser.add_argument(
        '--batch-sizes',
        nargs='+',
        type=int,
        default=[8],
        help='batch sizes of the sweep (>= 2)',
    )
    parser.add_argument(
        '--sizes',
        nargs='+',
        type=int,
        default=[320],
        help=f'input sides of the sweep (>= {MIN_SIZE})',
    )
    parser.add_argument(
        '--cases',
        nargs='+',
        metavar='BATCHxSIZE',
        help='explicit (batch, size) cases, e.g. 2x128 4x224 8x320, in '
        'place of the product of --batch-sizes and --sizes',
    )
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=None,
        help='torch CPU threads (default: torch default)',
    )
    parser.add_argument(
        '--device', default='auto', choices=['auto', 'cpu', 'cuda']
    )
    parser.add_argument(
        '--repeat',
        type=positive_int,
        default=10,
        help='timed iterations (the median is reported)',
    )
    parser.add_argument(
        '--runs',
        type=positive_int,
        default=1,
        help='fresh worker processes per case (model, batch, size, '
        'variant), interleaved; the tables show the median over runs '
        '(steadier on a shared or virtual machine), and with --interleave '
        "the median of each worker's own ratio to BN",
    )
    parser.add_argument('--warmup', type=nonnegative_int, default=3)
    parser.add_argument(
        '--variants',
        nargs='+',
        default=DEFAULT_VARIANTS,
        choices=sorted(VARIANTS),
    )
    parser.add_argument(
        '--timer',
        default='wall',
        choices=['wall', 'cpu'],
        help="'wall': elapsed time; 'cpu': this process's CPU time, steady "
        'on a busy machine (use with --threads 1; CPU device only)',
    )
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument(
        '--keep-freed-memory',
        action='store_true',
        help='run the workers with glibc keeping freed memory '
        '(MALLOC_MMAP_MAX_=0, no trimming): no page faults for fresh '
        'activations, which otherwise dominate CPU inference',
    )
    parser.add_argument(
        '--interleave',
        action='store_true',
        help='time all variants of a case in one worker process, their '
        'steps alternating (ratios to BN free of the 10-30%% that fresh '
        'processes differ by on a shared machine); peak memory is then not '
        'measured (it needs a process per variant)',
    )
    parser.add_argument(
        '--compile',
        action='store_true',
        help='time the models through torch.compile (inductor)',
    )
    parser.add_argument(
        '--before',
        metavar='CHECKOUT',
        help='another checkout of dn_mmdet (e.g. `git worktree add '
        '/tmp/dn_before main`): every worker runs again with its dn_mmdet, '
        "right after this one's, and the ratios to BN are shown side by "
        'side',
    )
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    """Exits with a usage error for options that cannot run; resolves
    ``--device auto`` and ``--cases``, and keeps each value once, in the
    given order."""
    import torch

    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error(
            f'--device cuda: this torch ({torch.__version__}) '
            'sees no CUDA device; use --device cpu (or auto)'
        )
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.timer == 'cpu' and args.device == 'cuda':
        parser.error('--timer cpu measures CPU work; use wall on CUDA')
    if not osp.isfile(args.config) and CONFIG_MODELS.intersection(args.models):
        parser.error(f'--config {args.config}: no such file')
    if args.cases:
        try:
            cases = [parse_dims(case, 2) for case in args.cases]
        except ValueError:
            parser.error(
                f'--cases must look like 4x224 (batch x size), got '
                f'{" ".join(args.cases)}'
            )
        args.batch_sizes = [b for b, _ in cases]
        args.sizes = [s for _, s in cases]
    else:
        cases = [(b, s) for b in args.batch_sizes for s in args.sizes]
    small = [b for b in args.batch_sizes if b < 2]
    if small:
        parser.error(
            f'--batch-sizes must be >= 2 (got {small[0]}): BN and '
            'DN train on batch statistics'
        )
    small = [s for s in args.sizes if s < MIN_SIZE]
    if small:
        parser.error(
            f'--sizes must be >= {MIN_SIZE} (got {small[0]}): the '
            f'backbones downsample {MIN_SIZE} times'
        )
    args.models = [m for m in MODELS if m in args.models]
    args.cases = list(dict.fromkeys(cases))
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))
    args.sizes = list(dict.fromkeys(args.sizes))
    args.variants = list(dict.fromkeys(args.variants))


def sweep_of(args):
    """The :class:`Sweep` the parsed arguments ask for."""
    return Sweep(
        models=args.models,
        cases=args.cases,
        variants=args.variants,
        runs=args.runs,
        keep_freed_memory=args.keep_freed_memory,
        worker=WorkerSettings(
            config=args.config,
            device=args.device,
            repeat=args.repeat,
            warmup=args.warmup,
            timer=args.timer,
            threads=args.threads,
            channels_last=args.channels_last,
            interleave=args.interleave,
            compile=args.compile,
        ),
        before=args.before,
    )


def main(argv=None):
    args = parse_args(argv)
    sweep = sweep_of(args)
    kernel_status = dn_kernel_status(args.device)
    try:
        runs = run_sweep(sweep, log=lambda line: print(line, flush=True))
    except WorkerError as error:
        sys.exit(str(error))
    results, table = format_sweep(runs, sweep, kernel_status)
    print(table)
    if args.out:
        write_json(args.out, vars(args), runs, results, sweep, table)


if __name__ == '__main__':
    main()
