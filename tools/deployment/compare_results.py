"""Compare two detectors' dumped results (``tools/test.py --out`` and
``tools/deployment/test_onnx.py --out``) image by image.

Example::

    python tools/deployment/compare_results.py pytorch.pkl onnx.pkl

Exits non-zero unless every image's top detections (``--top-k``) of each
result have a detection of the same label in the other with score and box
coordinates within ``--atol``.
"""

import argparse
import sys

from mmengine.fileio import load

import dn_mmdet  # noqa: F401  (registers everything)
from dn_mmdet.deployment import compare_detections
from dn_mmdet.utils.launch import check_file


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='Compare two dumped detection results'
    )
    parser.add_argument('reference', help="results .pkl, e.g. PyTorch's")
    parser.add_argument('other', help="results .pkl, e.g. onnxruntime's")
    parser.add_argument(
        '--top-k',
        type=int,
        default=10,
        help='detections compared per image (default 10)',
    )
    parser.add_argument(
        '--atol',
        type=float,
        default=1e-3,
        help='tolerance of scores and box coordinates (default 1e-3)',
    )
    return parser.parse_args(argv)


def main(argv=None) -> list:
    """Compare; return the :class:`DetectionDiff` of each image."""
    args = parse_args(argv)
    try:
        reference = load(check_file(args.reference, 'Results file'))
        other = load(check_file(args.other, 'Results file'))
        diffs = compare_detections(reference, other, args.top_k, args.atol)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'compare_results.py: error: {err}')
    unmatched = sum(d.unmatched for d in diffs)
    print(
        f'{len(diffs)} images, top {args.top_k} detections each: largest '
        f'score difference {max((d.score for d in diffs), default=0):.2e}'
        f', box {max((d.box for d in diffs), default=0):.2e} px; '
        f'{unmatched} unmatched (atol {args.atol})'
    )
    if unmatched:
        sys.exit('compare_results.py: error: the results differ')
    return diffs


if __name__ == '__main__':
    main()
