"""Plot validation mAP per epoch of several runs on one figure.

    python tools/analysis/plot_map.py RUN [RUN ...] [--labels BN DN-B] \
        [--metric coco/bbox_mAP] --out map.png

The DN paper's Figure 3 (mAP vs epoch, BN against DN-B) from the runs' own
logs. A RUN is either a training work dir, searched for mmengine's
``<timestamp>/vis_data/scalars.json`` (several timestamps, e.g. a resumed
run, are merged in time order, the later value winning for an epoch), or one
such json-lines file (``scalars.json`` or ``<timestamp>.json``). Validation
lines are those holding the metric; their ``step`` is the epoch (mmengine's
default ``log_metric_by_epoch=True``).
"""

import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def find_scalar_files(run: str) -> List[str]:
    """The json-lines log files of ``run`` (a file or a work dir), oldest
    first.

    Raises:
        FileNotFoundError: ``run`` does not exist or holds no log.
    """
    if osp.isfile(run):
        return [run]
    if not osp.isdir(run):
        raise FileNotFoundError(
            f'plot_map: run "{run}" is neither a log file nor a directory'
        )
    files = sorted(
        glob.glob(
            osp.join(run, '**', 'vis_data', 'scalars.json'), recursive=True
        )
    )
    if not files:
        raise FileNotFoundError(
            f'plot_map: no */vis_data/scalars.json under "{run}" (is it a '
            'training work dir, and did a validation run yet?)'
        )
    # Timestamped folders (YYYYmmdd_HHMMSS) sort in time order.
    return files


def read_metric(run: str, metric: str = 'coco/bbox_mAP') -> Dict[int, float]:
    """``{epoch: value}`` of ``metric`` in the logs of ``run``.

    Raises:
        FileNotFoundError: see :func:`find_scalar_files`.
        ValueError: a malformed line, or no line holds ``metric``.
    """
    values: Dict[int, float] = {}
    files = find_scalar_files(run)
    for path in files:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f'plot_map: {path}:{lineno} is not json ({err.msg})'
                    ) from None
                if metric in record:
                    if 'step' not in record:
                        raise ValueError(
                            f'plot_map: {path}:{lineno} has '
                            f'"{metric}" but no "step"'
                        )
                    values[int(record['step'])] = float(record[metric])
    if not values:
        raise ValueError(f'plot_map: no "{metric}" in {", ".join(files)}')
    return dict(sorted(values.items()))


def plot_runs(
    curves: Sequence[Dict[int, float]],
    labels: Sequence[str],
    out: str,
    metric: str = 'coco/bbox_mAP',
    title: str = None,
) -> None:
    """Draw one line per run, mAP in percent against epoch, save to ``out``."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for curve, label in zip(curves, labels):
        epochs = list(curve)
        ax.plot(
            epochs,
            [100 * v for v in curve.values()],
            marker='o',
            markersize=3,
            label=label,
        )
    ax.set_xlabel('epoch')
    ax.set_ylabel(f'{metric} (%)')
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot mAP per epoch of training runs (paper Figure 3)'
    )
    parser.add_argument(
        'runs', nargs='+', help='work dirs or scalars.json files'
    )
    parser.add_argument(
        '--labels', nargs='+', help='legend labels (default: run names)'
    )
    parser.add_argument(
        '--metric', default='coco/bbox_mAP', help='metric key to plot'
    )
    parser.add_argument('--title', default=None, help='figure title')
    parser.add_argument('--out', required=True, help='output image (.png)')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(
            f'--labels has {len(args.labels)} entries but there are '
            f'{len(args.runs)} runs'
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    labels = args.labels or [
        osp.basename(osp.normpath(run)) for run in args.runs
    ]
    try:
        curves = [read_metric(run, args.metric) for run in args.runs]
    except (OSError, ValueError) as err:  # the messages name run and line
        sys.exit(str(err))
    for label, curve in zip(labels, curves):
        points = ', '.join(f'{e}: {100 * v:.1f}' for e, v in curve.items())
        print(f'{label}: {points}')
    plot_runs(curves, labels, args.out, args.metric, args.title)
    print(f'saved {args.out}')


if __name__ == '__main__':
    main()
