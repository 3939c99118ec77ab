"""The paper's claims, each judged on a study's runs with a 95% interval.

A claim (a spec's ``claims`` entry) is one of:

* ``kind='effect'``: a contrast of cell means expected to be > 0, e.g.
  DN-B minus BN at batch 8, or (DN-B's drop) minus (BN's drop). Its terms
  are ``(coefficient, norm, batch_size, lr_mult)``; the effect is
  ``sum_i c_i * mean_i`` over the seeds of each cell, with the Welch
  (Satterthwaite) interval ``effect +- t_{0.975, df} * sqrt(sum_i c_i^2
  s_i^2 / n_i)``. A run that diverged has no metric of its own: it counts
  at ``chance`` (a network that outputs NaN predicts no better than a
  guess), so a setting where BN diverges is not read as if only its
  surviving seeds existed.
* ``kind='diverges'``: a normaliser expected to diverge (NaN/Inf, or
  collapse to chance) at its setting; the count of such runs is reported.

Verdicts (at this scale): an effect is *confirmed* when its interval lies
above 0, *contradicted* when it lies below 0, *not confirmed* when it holds
0; a divergence is confirmed when most runs diverge, contradicted when none
does. A claim whose cells do not all have every seed's outcome is
*pending* and states nothing but how many runs it has.
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence

from .tables import mean_std

# Two-sided 95% critical values of Student's t, df = 1..30.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
DONE = ('finished', 'collapsed', 'diverged')


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` (>= 1, fractional:
    linear between the table's integers; above 30, 1.96 + 2.4 / df, within
    0.003 of the exact value)."""
    if df < 1:
        raise ValueError(f't975: df must be >= 1, got {df}')
    if df >= 30:
        return 1.96 + 2.4 / df
    low = int(df)
    frac = df - low
    high = min(low + 1, 30)
    return _T975[low - 1] * (1 - frac) + _T975[high - 1] * frac


def welch_interval(terms: Sequence[tuple]) -> tuple:
    """(effect, low, high) of ``sum c * mean(values)``.

    Args:
        terms: ``(c, values)`` pairs, each with >= 2 values.

    Returns:
        tuple: the effect and its 95% interval (Welch-Satterthwaite df);
        the interval is the effect itself when every cell has spread 0.
    """
    effect, var, df_den = 0.0, 0.0, 0.0
    for c, values in terms:
        n = len(values)
        if n < 2:
            raise ValueError('welch_interval: every cell needs >= 2 values')
        part = c * c * statistics.variance(values) / n
        effect += c * statistics.fmean(values)
        var += part
        df_den += part * part / (n - 1)
    if var == 0:
        return effect, effect, effect
    half = t975(var * var / df_den) * math.sqrt(var)
    return effect, effect - half, effect + half


def _cell_runs(
    records: Sequence[dict], norm: str, batch: int, mult: float
) -> List[dict]:
    return [
        r
        for r in records
        if r['norm'] == norm
        and r['batch_size'] == batch
        and float(r['lr_mult']) == float(mult)
    ]


def _kept_finals(runs: Sequence[dict], scale: float) -> List[float]:
    """Final metrics (scaled) of the runs that kept one (not diverged)."""
    return [
        r['final'] * scale
        for r in runs
        if r.get('final') is not None and r['status'] != 'diverged'
    ]


def judge(claim: dict, study: dict, records: Sequence[dict]) -> dict:
    """The verdict of ``claim`` on ``records``.

    Returns:
        dict: ``claim`` plus ``done``/``runs`` (outcomes of its cells),
        ``verdict`` ('confirmed', 'not confirmed', 'contradicted' or
        'pending'), and for an effect ``effect``, ``low``, ``high`` (scaled
        like the tables), for a divergence ``diverged`` and ``scored``
        (the metric's mean over the runs that kept one, or None).
    """
    scale = study['metric_scale']
    seeds = len(study['seeds'])
    cells = [
        (c, _cell_runs(records, n, b, m)) for c, n, b, m in claim['terms']
    ]
    runs = seeds * len(cells)
    done = sum(sum(r['status'] in DONE for r in cell) for _, cell in cells)
    out = dict(claim, runs=runs, done=done)
    if done < runs:
        return dict(out, verdict='pending')
    if claim['kind'] == 'diverges':
        ((_, cell),) = cells
        bad = sum(r['status'] in ('diverged', 'collapsed') for r in cell)
        kept = _kept_finals(cell, scale)
        verdict = (
            'confirmed'
            if 2 * bad > len(cell)
            else 'contradicted'
            if bad == 0
            else 'not confirmed'
        )
        return dict(
            out,
            verdict=verdict,
            diverged=bad,
            scored=mean_std(kept)[0],
        )
    chance = study.get('chance')
    terms = []
    for c, cell in cells:
        values = []
        for r in cell:
            if r['status'] == 'diverged' or r.get('final') is None:
                if chance is None:
                    raise ValueError(
                        f'claim {claim["key"]}: a run without '
                        "a metric needs the spec's chance"
                    )
                values.append(chance * scale)
            else:
                values.append(r['final'] * scale)
        terms.append((c, values))
    effect, low, high = welch_interval(terms)
    verdict = (
        'confirmed'
        if low > 0
        else 'contradicted'
        if high < 0
        else 'not confirmed'
    )
    return dict(out, verdict=verdict, effect=effect, low=low, high=high)


def late_gain(records: Sequence[dict], scale: float) -> Optional[float]:
    """Mean over runs of (final - value at 3/4 of the epochs): how much the
    curves still rose in their last quarter (flat curves: near 0)."""
    gains = []
    for r in records:
        curve = {int(e): v for e, v in (r.get('curve') or {}).items()}
        if r['status'] != 'finished' or len(curve) < 2:
            continue
        last = max(curve)
        at = min(curve, key=lambda e: abs(e - 0.75 * last))
        gains.append((curve[last] - curve[at]) * scale)
    return statistics.fmean(gains) if gains else None


def claims_markdown(
    study: dict, records: Sequence[dict], claims: Sequence[dict]
) -> str:
    """The verdict table of ``claims`` (markdown): one row a claim."""
    unit = study['metric_label']
    lines = [
        '| claim | source (paper) | at this scale | verdict |',
        '|---|---|---|---|',
    ]
    for claim in claims:
        result = judge(claim, study, records)
        if result['verdict'] == 'pending':
            measured = '-'
            verdict = f'pending: {result["done"]} of {result["runs"]} runs'
        elif claim['kind'] == 'diverges':
            scored = result['scored']
            rest = (
                '' if scored is None else f'; the others end at {scored:.1f}'
            )
            measured = (
                f'{result["diverged"]} of {result["done"]} runs '
                f'diverged or collapsed{rest}'
            )
            verdict = result['verdict']
        else:
            measured = (
                f'{result["effect"]:+.1f} [{result["low"]:+.1f}, '
                f'{result["high"]:+.1f}] ({unit}, 95% interval)'
            )
            verdict = result['verdict']
        lines.append(
            f'| {claim["text"]} | {claim["source"]} | {measured} | {verdict} |'
        )
    return '\n'.join(lines) + '\n'


def cell_summary(study: dict, records: Sequence[dict]) -> Dict[tuple, dict]:
    """Per (norm, batch, lr mult), in the spec's order (its normalisers,
    then the reference lr's batches from the largest, then the other lrs):
    runs done, the final metric's mean and std over the runs that kept one
    (scaled; None below one / two), and the late gain (scaled)."""
    order = list(study['norms'])
    keys = sorted(
        {(r['norm'], r['batch_size'], float(r['lr_mult'])) for r in records},
        key=lambda k: (
            order.index(k[0]) if k[0] in order else len(order),
            k[0],
            k[2],
            -k[1],
        ),
    )
    out = {}
    for key in keys:
        cell = _cell_runs(records, *key)
        mean, std = mean_std(_kept_finals(cell, study['metric_scale']))
        out[key] = dict(
            done=sum(r['status'] in DONE for r in cell),
            runs=len(cell),
            mean=mean,
            std=std,
            late_gain=late_gain(cell, study['metric_scale']),
        )
    return out
