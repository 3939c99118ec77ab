"""Latency of detectors in onnxruntime beside PyTorch's, measured side by
side in one process (batch 1; the network: normalisation to the head's raw
outputs).

Example (DN-B against BN, the shapes size and 320 px, one thread and all)::

    python tools/deployment/benchmark_onnx.py \\
        configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py \\
        configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py \\
        --sizes 128 320 --threads 1 0 \\
        --out docs/benchmarks/onnx_latency.json

The last config is the baseline of the ratios. Without ``--checkpoints``
the models have their seeded initial weights (latency does not depend on
the values: the network has no data-dependent control flow).
"""

import argparse
import os.path as osp
import sys
import tempfile

import torch

import dn_mmdet  # noqa: F401  (registers everything)
from dn_mmdet.deployment import (
    all_threads,
    benchmark_latency,
    format_latency_table,
    load_detector,
    machine_state,
    write_latency_json,
)
from dn_mmdet.utils.launch import CHECKPOINT_ERRORS, load_config


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='onnxruntime and PyTorch latency of detectors'
    )
    parser.add_argument(
        'configs', nargs='+', help='detector configs; the last is the baseline'
    )
    parser.add_argument(
        '--checkpoints',
        nargs='+',
        help="a checkpoint for each config, 'none' for its initial weights",
    )
    parser.add_argument(
        '--sizes',
        type=int,
        nargs='+',
        default=[128, 320],
        help='square input sizes (default 128 320)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        nargs='+',
        default=[1, 0],
        help='thread counts; 0 for every CPU (default 1 0)',
    )
    parser.add_argument(
        '--repeats', type=int, default=30, help='timed rounds (default 30)'
    )
    parser.add_argument(
        '--warmup',
        type=int,
        default=3,
        help='untimed rounds first (default 3)',
    )
    parser.add_argument(
        '--clock',
        choices=['wall', 'cpu'],
        default='wall',
        help="'wall': elapsed time, the latency (default); 'cpu': the "
        "process's CPU time, steadier on a busy machine (with one thread)",
    )
    parser.add_argument(
        '--out',
        help='also write the rows, the settings and the load average '
        'before and after to this .json file',
    )
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith('.json'):
        parser.error(f'--out must be a .json file, got {args.out}')
    if args.checkpoints and len(args.checkpoints) != len(args.configs):
        parser.error(
            f'{len(args.checkpoints)} --checkpoints for '
            f'{len(args.configs)} configs'
        )
    return args


def _build(config: str, checkpoint):
    from mmdet.apis import init_detector

    cfg = load_config(config)
    if checkpoint and checkpoint.lower() != 'none':
        return load_detector(cfg, checkpoint)
    torch.manual_seed(0)
    return init_detector(cfg, None, device='cpu')


def main(argv=None) -> list:
    """Measure; print and return :func:`benchmark_latency`'s rows."""
    args = parse_args(argv)
    checkpoints = args.checkpoints or [None] * len(args.configs)
    try:
        detectors = {
            osp.splitext(osp.basename(c))[0]: _build(c, ckpt)
            for c, ckpt in zip(args.configs, checkpoints)
        }
        threads = [t or all_threads() for t in args.threads]
        before = machine_state()
        with tempfile.TemporaryDirectory() as tmp:
            rows = benchmark_latency(
                detectors,
                args.sizes,
                threads,
                tmp,
                args.repeats,
                args.warmup,
                clock=args.clock,
            )
    except (FileNotFoundError, ValueError, *CHECKPOINT_ERRORS) as err:
        sys.exit(f'benchmark_onnx.py: error: {err}')
    print(
        f'median {args.clock} time (ms) of {args.repeats} rounds, batch 1, '
        f'torch {torch.__version__}; ratio: over {list(detectors)[-1]}'
    )
    print(format_latency_table(rows))
    if args.out:
        report = write_latency_json(
            args.out,
            rows,
            before,
            configs=args.configs,
            checkpoints=args.checkpoints,
            sizes=args.sizes,
            threads=threads,
            repeats=args.repeats,
            warmup=args.warmup,
            clock=args.clock,
        )
        print(
            f'load average (1, 5, 15 min) before '
            f'{report["machine_before"]["load_average"]}, after '
            f'{report["machine_after"]["load_average"]}; wrote {args.out}'
        )
    return rows


if __name__ == '__main__':
    main()
