"""Export a trained single-stage detector (e.g. the DN SSDLite) to ONNX.

Examples::

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT \\
        --output-file work_dirs/dnb.onnx --verify
    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT \\
        --output-file dnb.onnx --shape 320 320 --opset 13 --dynamic-batch

The graph is the data preprocessor's normalisation, the backbone, the neck
and the head's raw outputs (``cls_score_0..L-1``, ``bbox_pred_0..L-1``);
its input ``image`` is (N, 3, H, W) float32 as the test pipeline gives it
(BGR, 0..255). Box decoding and NMS run after onnxruntime in the config's
own head (``tools/deployment/test_onnx.py``). ``--verify`` runs both models
on the first image of the config's test set and fails unless the top
detections agree within 1e-3 (docs/en/deployment.md).
"""

import argparse
import sys

import dn_mmdet  # noqa: F401  (registers everything)
from dn_mmdet.deployment import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    OnnxRuntimeDetector,
    export_detector,
    first_test_batch,
    load_detector,
    pipeline_input_shape,
    verify_detector,
)
from dn_mmdet.utils.launch import (
    CHECKPOINT_ERRORS,
    CfgOptionsAction,
    load_config,
)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Export a detector checkpoint to ONNX'
    )
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--output-file', required=True, help='the .onnx file to write'
    )
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='input height and width (default: the Resize scale of the '
        "config's test pipeline)",
    )
    parser.add_argument(
        '--opset',
        type=int,
        default=DEFAULT_OPSET,
        help=f'ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: '
        f'{DEFAULT_OPSET})',
    )
    parser.add_argument(
        '--dynamic-batch',
        action='store_true',
        help='a free batch dimension (default: batch 1)',
    )
    parser.add_argument(
        '--verify',
        action='store_true',
        help="compare onnxruntime's detections with PyTorch's on the first "
        'image of the test set',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config settings, KEY=VALUE pairs',
    )
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Export (and verify); return ``verify_detector``'s report or {}."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        shape = args.shape or pipeline_input_shape(cfg)
        detector = load_detector(cfg, args.checkpoint)
        export_detector(
            detector, args.output_file, shape, args.opset, args.dynamic_batch
        )
    except (
        FileNotFoundError,
        ValueError,
        TypeError,
        *CHECKPOINT_ERRORS,
    ) as err:
        sys.exit(f'pytorch2onnx.py: error: {err}')
    print(
        f'wrote {args.output_file}: input image (N, 3, {shape[0]}, '
        f'{shape[1]}), opset {args.opset}'
        f'{", dynamic batch" if args.dynamic_batch else ""}'
    )
    if not args.verify:
        return {}
    report = verify_detector(
        detector,
        OnnxRuntimeDetector(args.output_file, cfg.model),
        first_test_batch(cfg),
    )
    print(
        f'verify: largest difference of the raw outputs '
        f'{report["max_output_diff"]:.2e}'
    )
    for diff in report['detections']:
        print(
            f'verify: top {diff.count} detections: largest score '
            f'difference {diff.score:.2e}, box {diff.box:.2e} px, '
            f'{diff.unmatched} unmatched'
        )
    if not report['ok']:
        sys.exit(
            'pytorch2onnx.py: error: onnxruntime and PyTorch detect '
            'differently (above)'
        )
    print("verify: onnxruntime gives PyTorch's detections")
    return report


if __name__ == '__main__':
    main()
