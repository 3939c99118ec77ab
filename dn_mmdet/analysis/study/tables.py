"""The markdown table of a normaliser study, from its run records
(``table.md``, written by :func:`.report.write_report`).

Per normaliser x batch size x lr multiplier: the final and best metric as
mean +- std over the seeds, how many runs diverged (NaN/Inf) or collapsed,
and the mean wall time; first as one matrix (normalisers x settings, the
final metric), then in full. :func:`aggregate` and :func:`grid_settings`
serve the plots (:mod:`.plots`) too.
"""

import statistics
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from .spec import format_mult

__all__ = [
    'SCORED',
    'aggregate',
    'bad_runs',
    'grid_settings',
    'mean_std',
    'table_markdown',
]

# Runs with a final metric that enters the means.
SCORED = ('finished', 'collapsed')


def mean_std(values: Sequence[float]):
    """(mean, sample std) of ``values``; std is None for fewer than 2."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def aggregate(records: Sequence[dict]) -> Dict[tuple, dict]:
    """Group runs by (norm, batch size, lr multiplier), seeds pooled.

    Returns:
        dict: ``{(norm, batch_size, lr_mult): cell}`` where a cell holds
        ``runs`` (how many), ``diverged`` (non-finite), ``collapsed``,
        ``failed``, ``pending``, ``final``/``best`` (mean, std) over the runs
        that ended with a metric (finished or collapsed; NaN runs have none),
        ``scored`` (how many those are), ``wall`` (mean seconds of the
        finished, collapsed and diverged runs) and ``curves`` (their
        ``{epoch: value}`` curves).
    """
    groups = defaultdict(list)
    for record in records:
        key = (record['norm'], record['batch_size'], record['lr_mult'])
        groups[key].append(record)
    cells = {}
    for key, runs in groups.items():
        count = defaultdict(int)
        for run in runs:
            count[run['status']] += 1
        scored = [
            r
            for r in runs
            if r['status'] in SCORED and r.get('final') is not None
        ]
        walls = [
            r['wall_s']
            for r in runs
            if r['status'] in SCORED + ('diverged',)
            and r.get('wall_s') is not None
        ]
        cells[key] = dict(
            runs=len(runs),
            diverged=count['diverged'],
            collapsed=count['collapsed'],
            failed=count['failed'],
            pending=count['pending'],
            scored=len(scored),
            final=mean_std([r['final'] for r in scored]),
            best=mean_std([r['best'] for r in scored]),
            wall=statistics.fmean(walls) if walls else None,
            curves=[
                {int(e): v for e, v in r.get('curve', {}).items()}
                for r in runs
                if r.get('curve')
            ],
        )
    return cells


def grid_settings(study: dict) -> List[tuple]:
    """(batch size, lr multiplier) of the grid, in the study's order."""
    ref_batch = study['reference']['batch_size']
    ref_mult = study['reference']['lr_mult']
    if study['grid'] == 'full':
        return [
            (float(b), float(m))
            for m in study['lr_mults']
            for b in study['batch_sizes']
        ]
    cells = [(b, ref_mult) for b in study['batch_sizes']]
    return [
        (b, float(m))
        for b, m in cells + [(ref_batch, m) for m in study['lr_mults'][1:]]
    ]


def _fmt(
    value: Optional[float], std: Optional[float], scale: float, digits: int = 1
) -> str:
    if value is None:
        return '-'
    text = f'{value * scale:.{digits}f}'
    if std is not None:
        text += f' ± {std * scale:.{digits}f}'
    return text


def bad_runs(cell: dict) -> int:
    """How many runs of an :func:`aggregate` cell diverged or collapsed."""
    return cell['diverged'] + cell['collapsed']


def _cell_text(cell: Optional[dict], scale: float) -> str:
    if cell is None:
        return ''
    done = cell['runs'] - cell['pending'] - cell['failed']
    if done == 0:
        return 'failed' if cell['failed'] else 'pending'
    if cell['scored']:
        text = _fmt(*cell['final'], scale)
    else:  # no run ended with a metric
        text = 'NaN' if cell['diverged'] else 'no metric'
    if bad_runs(cell):
        text += f' †{bad_runs(cell)}/{done}'
    if cell['pending'] or cell['failed']:
        text += f' ({cell["pending"] + cell["failed"]} to run)'
    return text


def _minutes(seconds: Optional[float]) -> str:
    return '-' if seconds is None else f'{seconds / 60:.1f}'


def table_markdown(study: dict, records: Sequence[dict]) -> str:
    """The study's table (markdown)."""
    cells = aggregate(records)
    scale = study['metric_scale']
    label = study['metric_label']
    settings = grid_settings(study)
    lr_note = (
        'scaled linearly with the batch size'
        if study['lr_scaling'] == 'linear'
        else 'not scaled with the batch size, as in the paper'
    )
    collapse = (
        ''
        if study['collapse_below'] is None
        else f' or collapsed (final {study["metric"]} <= '
        f'{study["collapse_below"]:g})'
    )
    lines = [
        f'# Normaliser study `{study["name"]}`',
        '',
        f'Base config `{study["base_config"]}`, '
        f'{study["max_epochs"]} epoch{"" if study["max_epochs"] == 1 else "s"}'
        f', base lr {study["base_lr"]:g} '
        f'({lr_note}); seeds {", ".join(map(str, study["seeds"]))}; '
        f'{len(records)} runs. Metric: {label} '
        f'(`{study["metric"]}`'
        f'{"" if scale == 1 else f" x {scale:g}"}) of the last validation.',
        '',
        f'Cells: mean ± std over the seeds that ended with a metric; '
        f'†k/n: k of n runs diverged (NaN/Inf){collapse}. A diverged run '
        'has no final metric and is left out of the mean.',
        '',
        '| normaliser | '
        + ' | '.join(f'batch {b:g}, lr x{format_mult(m)}' for b, m in settings)
        + ' |',
        '|---' * (len(settings) + 1) + '|',
    ]
    for norm, norm_label in study['norms'].items():
        row = [_cell_text(cells.get((norm, b, m)), scale) for b, m in settings]
        lines.append(f'| {norm_label} | ' + ' | '.join(row) + ' |')
    lines += [
        '',
        '| normaliser | batch | lr x | final | best | diverged / runs | '
        'mean wall time (min) |',
        '|---|---|---|---|---|---|---|',
    ]
    for norm, norm_label in study['norms'].items():
        for b, m in settings:
            cell = cells.get((norm, b, m))
            if cell is None:
                continue
            done = cell['runs'] - cell['pending'] - cell['failed']
            bad = f'{bad_runs(cell)}/{done}'
            if cell['collapsed']:
                bad += f' ({cell["collapsed"]} collapsed)'
            if cell['pending'] or cell['failed']:
                bad += f', {cell["pending"] + cell["failed"]} to run'
            lines.append(
                f'| {norm_label} | {b:g} | {format_mult(m)} | '
                f'{_fmt(*cell["final"], scale)} | '
                f'{_fmt(*cell["best"], scale)} | {bad} | '
                f'{_minutes(cell["wall"])} |'
            )
    return '\n'.join(lines) + '\n'
