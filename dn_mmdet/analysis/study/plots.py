"""The plots of a normaliser study, from its run records (written by
:func:`.report.write_report`).

* ``metric_vs_batch.png`` and ``metric_vs_lr.png``: final metric against
  batch size (at the reference lr) and against the lr multiplier (at the
  reference batch), one line per normaliser, error bars one std over seeds,
  a cross on the x axis where no run ended with a metric;
* ``metric_vs_epoch.png``: the metric per epoch (the DN paper's Figure 3),
  one panel per setting, one line per normaliser (mean over seeds, shaded
  +- one std).

Every plot marks chance (the spec's ``chance``, where given) and the
plateau of the first normaliser at the reference setting (the mean of its
final metric: the baseline the others are read against).
"""

import math
import os.path as osp
from typing import Dict, List, Optional, Sequence

# The Figure API, not pyplot: no backend switch, nothing process-wide.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .spec import format_mult
from .tables import aggregate, bad_runs, grid_settings, mean_std

__all__ = ['mean_curve', 'plateau', 'plot_curves', 'plot_sweeps']


def plateau(study: dict, cells: Dict[tuple, dict]) -> Optional[float]:
    """Mean final metric (scaled) of the first normaliser at the reference
    setting: the baseline's plateau, None before it has a run."""
    ref = (
        study['reference']['batch_size'],
        float(study['reference']['lr_mult']),
    )
    cell = cells.get((next(iter(study['norms'])),) + ref)
    if cell is None or cell['final'][0] is None:
        return None
    return cell['final'][0] * study['metric_scale']


def _mark_levels(ax, study: dict, cells: Dict[tuple, dict]) -> None:
    """Horizontal lines at chance and at the baseline's plateau."""
    chance = study.get('chance')
    if chance is not None:
        ax.axhline(
            chance * study['metric_scale'],
            color='0.4',
            linestyle='--',
            linewidth=0.8,
            label='chance',
        )
    level = plateau(study, cells)
    if level is not None:
        first = next(iter(study['norms'].values()))
        ax.axhline(
            level,
            color='0.4',
            linestyle=':',
            linewidth=0.8,
            label=f'{first} plateau (reference)',
        )


def _sweep_axis(ax, study, cells, points, x_of, xlabel):
    """One line per normaliser through ``points`` ((batch, mult) pairs)."""
    scale = study['metric_scale']
    count = len(study['norms'])
    lowest = 0.0
    for index, (norm, norm_label) in enumerate(study['norms'].items()):
        color = f'C{index % 10}'
        # Each normaliser a little to the side, so equal values stay visible.
        dodge = 1 + 0.025 * (index - (count - 1) / 2)
        xs, ys, errs, crosses = [], [], [], []
        for point in points:
            cell = cells.get((norm,) + point)
            if cell is None:
                continue
            mean, std = cell['final']
            if mean is None:
                if cell['diverged'] or cell['collapsed']:
                    crosses.append(x_of(point) * dodge)
                continue
            lowest = min(lowest, mean * scale)
            xs.append(x_of(point) * dodge)
            ys.append(mean * scale)
            errs.append((std or 0.0) * scale)
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=errs,
                marker='o',
                markersize=4,
                capsize=3,
                color=color,
                label=norm_label,
            )
        if crosses:
            ax.plot(
                crosses,
                [0.0] * len(crosses),
                linestyle='none',
                marker='X',
                markersize=9,
                color=color,
                clip_on=False,
                label=None if xs else f'{norm_label} (diverged)',
            )
    _mark_levels(ax, study, cells)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(study['metric_label'])
    ax.set_ylim(bottom=lowest)
    ax.grid(True, alpha=0.3)


def plot_sweeps(
    study: dict, records: Sequence[dict], out_dir: str
) -> List[str]:
    """metric_vs_batch.png and metric_vs_lr.png (where the grid varies
    them). Returns the files written."""
    cells = aggregate(records)
    ref_batch = study['reference']['batch_size']
    ref_mult = float(study['reference']['lr_mult'])
    written = []
    sweeps = [
        (
            'metric_vs_batch.png',
            'batch_sizes',
            [(b, ref_mult) for b in sorted(study['batch_sizes'])],
            lambda p: p[0],
            'batch size (images per step)',
            f'lr x{ref_mult:g}',
        ),
        (
            'metric_vs_lr.png',
            'lr_mults',
            [(ref_batch, float(m)) for m in sorted(study['lr_mults'])],
            lambda p: p[1],
            'learning-rate multiplier',
            f'batch {ref_batch}',
        ),
    ]
    for filename, key, points, x_of, xlabel, fixed in sweeps:
        if len(study[key]) < 2:
            continue
        fig = Figure(figsize=(6, 4.2), dpi=120)
        ax = fig.subplots()
        _sweep_axis(ax, study, cells, points, x_of, xlabel)
        if key == 'batch_sizes':
            ax.set_xscale('log', base=2)
        ax.set_xticks([x_of(p) for p in points])
        ax.set_xticklabels([f'{x_of(p):g}' for p in points])
        ax.set_title(
            f'{study["name"]}: final {study["metric_label"]} '
            f'({fixed}; mean ± std over seeds)\nX: no run of the '
            'setting ended with a metric (diverged or collapsed)',
            fontsize=8,
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = osp.join(out_dir, filename)
        fig.savefig(path)
        written.append(path)
    return written


def mean_curve(curves: Sequence[Dict[int, float]]):
    """Epochs, mean and std (0 where one value) over ``curves``."""
    epochs = sorted({e for c in curves for e in c})
    means, stds = [], []
    for epoch in epochs:
        values = [
            c[epoch] for c in curves if epoch in c and math.isfinite(c[epoch])
        ]
        mean, std = mean_std(values)
        means.append(math.nan if mean is None else mean)
        stds.append(std or 0.0)
    return epochs, means, stds


def plot_curves(study: dict, records: Sequence[dict], out_dir: str) -> str:
    """metric_vs_epoch.png: one panel per setting (the paper's Figure 3)."""
    cells = aggregate(records)
    scale = study['metric_scale']
    settings = grid_settings(study)
    cols = min(len(settings), 3)
    rows = math.ceil(len(settings) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=120)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, (batch, mult) in zip(axes.flat, settings):
        for index, (norm, norm_label) in enumerate(study['norms'].items()):
            cell = cells.get((norm, batch, mult))
            if not cell or not cell['curves']:
                continue
            epochs, means, stds = mean_curve(cell['curves'])
            means = [m * scale for m in means]
            stds = [s * scale for s in stds]
            color = f'C{index % 10}'
            bad = f' †{bad_runs(cell)}' if bad_runs(cell) else ''
            ax.plot(
                epochs,
                means,
                marker='o',
                markersize=3,
                color=color,
                label=f'{norm_label}{bad}',
            )
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        ax.set_title(f'batch {batch:g}, lr x{format_mult(mult)}', fontsize=9)
        _mark_levels(ax, study, cells)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel(study['metric_label'])
    for ax in list(axes.flat)[len(settings) :]:
        ax.axis('off')
    fig.suptitle(
        f'{study["name"]}: {study["metric_label"]} per epoch '
        '(mean ± std over seeds; †k: k runs diverged or collapsed)',
        fontsize=9,
    )
    fig.tight_layout()
    path = osp.join(out_dir, 'metric_vs_epoch.png')
    fig.savefig(path)
    return path
