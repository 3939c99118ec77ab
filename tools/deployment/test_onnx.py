"""Evaluate an exported detector (pytorch2onnx.py) in onnxruntime on the
config's test set, with the config's pipeline and evaluator.

Examples::

    python tools/deployment/test_onnx.py CONFIG MODEL.onnx   # COCO mAP
    python tools/deployment/test_onnx.py CONFIG MODEL.onnx --out res.pkl

``--out`` dumps the results as ``tools/test.py --out`` does (mmdet's
``DumpDetResults``), so that ``compare_results.py`` can hold them against
PyTorch's.
"""

import argparse
import sys

import dn_mmdet  # noqa: F401  (registers everything)
from dn_mmdet.deployment import evaluate_onnx
from dn_mmdet.utils.launch import (
    add_test_args,
    check_file,
    default_work_dir,
    load_config,
    print_test_metrics,
)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Evaluate an ONNX detector with onnxruntime'
    )
    parser.add_argument('config', help='the config it was exported from')
    parser.add_argument('model', help='the .onnx file')
    add_test_args(
        parser,
        work_dir_help='the dir for logs (default: work_dirs/<config name>'
        '_onnx)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=0,
        help="onnxruntime's threads an operator (default 0: one a core)",
    )
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f'--threads must be >= 0, got {args.threads}')
    return args


def main(argv=None) -> dict:
    """Evaluate; return the metrics (e.g. ``coco/bbox_mAP``)."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        check_file(args.model, 'ONNX model')
        cfg.work_dir = args.work_dir or (
            default_work_dir(args.config) + '_onnx'
        )
        metrics = evaluate_onnx(cfg, args.model, args.out, args.threads)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'test_onnx.py: error: {err}')
    # As tools/test.py's (CocoMetric returns nothing without detections).
    print_test_metrics(
        metrics, 'Test results (onnxruntime):', 'model.test_cfg.score_thr'
    )
    return metrics


if __name__ == '__main__':
    main()
