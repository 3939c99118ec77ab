"""The benchmark's results: medians over runs, ratios to BN, the tables
and the summary of the worst ratios."""

import json
import statistics

from .cases import DN_VARIANTS, MODELS
from .worker import PAIRED

SUMMARY_KEYS = (
    ('train_ms', 'train'),
    ('infer_ms', 'infer'),
    ('train_peak_mib', 'train peak mem'),
)


def case_of(result):
    """(model, batch, size, variant) of a result."""
    return (
        result['model'],
        result['batch'],
        result['size'],
        result['variant'],
    )


def median_over_runs(runs):
    """One result per case (model, batch, size, variant), in the order the
    cases first appear: the median of each figure over the runs."""
    cases = {}
    for r in runs:
        cases.setdefault(case_of(r), []).append(r)
    results = []
    for (model, batch, size, variant), mine in cases.items():
        merged = dict(model=model, variant=variant, batch=batch, size=size)
        for key in mine[0]:
            if key not in merged:
                merged[key] = statistics.median(r[key] for r in mine)
        results.append(merged)
    return results


def ratio_of(result, base, key):
    """The ratio of ``result[key]`` to BN's: the median of the workers'
    paired ratios where they were measured (``interleave``), else
    ``result[key] / base[key]``; None where either is missing or the base
    is not positive (e.g. a peak RSS that did not grow)."""
    if result.get(key + PAIRED) is not None:
        return result[key + PAIRED]
    value, ref = result.get(key), (base or {}).get(key)
    if value is None or ref is None or ref <= 0:
        return None
    return value / ref


def bn_base(results, result):
    """BN's result of the same model, batch and size (None: none)."""
    return next(
        (
            r
            for r in results
            if r['variant'] == 'bn' and case_of(r)[:3] == case_of(result)[:3]
        ),
        None,
    )


def summarise(results, models, variants):
    """The worst (largest) ratio to BN per model and figure: over the fast
    DN variants together (``group`` 'DN'), then over each other non-BN
    variant alone. A list of dicts: model, group, and per figure of
    :data:`SUMMARY_KEYS` ``dict(ratio, batch, size, variant)`` or None."""
    groups = [('DN', [v for v in variants if v in DN_VARIANTS])]
    groups += [
        (v, [v]) for v in variants if v != 'bn' and v not in DN_VARIANTS
    ]
    summary = []
    for model in models:
        rows = [r for r in results if r['model'] == model]
        for group, members in groups:
            mine = [r for r in rows if r['variant'] in members]
            if not mine:
                continue
            entry = dict(model=model, group=group)
            for key, _ in SUMMARY_KEYS:
                worst = None
                for r in mine:
                    ratio = ratio_of(r, bn_base(rows, r), key)
                    if ratio is not None and (
                        worst is None or ratio > worst['ratio']
                    ):
                        worst = dict(
                            ratio=ratio,
                            batch=r['batch'],
                            size=r['size'],
                            variant=r['variant'],
                        )
                entry[key] = worst
            summary.append(entry)
    return summary


def format_summary_line(entry):
    """``'resnet18: worst train 1.25x (b8 64 dnb-r16-goup), ...'``."""
    name = entry['model'] + (
        '' if entry['group'] == 'DN' else f' [{entry["group"]}]'
    )
    parts = []
    for key, label in SUMMARY_KEYS:
        worst = entry[key]
        parts.append(
            f'{label} -'
            if worst is None
            else f'{label} {worst["ratio"]:.2f}x (b{worst["batch"]} '
            f'{worst["size"]} {worst["variant"]})'
        )
    return f'{name}: worst ' + ', '.join(parts)


def format_header(sweep, kernel_status):
    """The line saying how the sweep measured."""
    worker = sweep.worker
    interleaved = (
        ', variants interleaved in one process' if worker.interleave else ''
    )
    return (
        f'batch x size {" ".join(f"{b}x{s}" for b, s in sweep.cases)} px, '
        f'device {worker.device}, '
        f'threads {worker.threads or "default"}, median {worker.timer} time '
        f'of {worker.repeat}'
        f'{f" (median of {sweep.runs} runs)" if sweep.runs > 1 else ""}'
        f'{", glibc keeps freed memory" if sweep.keep_freed_memory else ""}'
        f'{interleaved}'
        f'; DN CPU kernel: {kernel_status}'
    )


def format_table(results, sweep, kernel_status):
    """The header line, then a table per model (rows batch x size x
    variant) and the summary lines."""
    lines = [format_header(sweep, kernel_status)]

    def ratio(r, key):
        value = ratio_of(r, bn_base(results, r), key)
        return '-' if value is None else f'{value:.2f}'

    def fmt(value, digits=1):
        return '-' if value is None else f'{value:.{digits}f}'

    for model in sweep.models:
        lines += [
            '',
            f'{model}: {MODELS[model]}',
            '',
            '| batch | size | variant | train ms | x BN | train peak MiB | '
            'x BN | infer ms | x BN | infer peak MiB |',
            '|---|---|---|---|---|---|---|---|---|---|',
        ]
        for r in results:
            if r['model'] != model:
                continue
            lines.append(
                f'| {r["batch"]} | {r["size"]} | {r["variant"]} | '
                f'{fmt(r.get("train_ms"))} | {ratio(r, "train_ms")} | '
                f'{fmt(r.get("train_peak_mib"))} | '
                f'{ratio(r, "train_peak_mib")} | {fmt(r.get("infer_ms"))} | '
                f'{ratio(r, "infer_ms")} | {fmt(r.get("infer_peak_mib"))} |'
            )
    summary = summarise(results, sweep.models, sweep.variants)
    if summary:
        dn = [v for v in sweep.variants if v in DN_VARIANTS]
        lines += [
            '',
            'Worst ratio to BN per model (the first line of a '
            f'model: over {" and ".join(dn) or "no DN variant"}):',
        ]
        lines += [format_summary_line(entry) for entry in summary]
    return '\n'.join(lines)


def format_before_after(before, after):
    """A table of each non-BN variant's ratios to BN in two checkouts'
    results (``median_over_runs`` of ``tree='before'`` and ``'after'``
    runs), case by case: train and inference, before -> after."""
    lines = [
        '| model | batch | size | variant | train x BN before | after '
        '| infer x BN before | after |',
        '|---' * 8 + '|',
    ]
    for r in after:
        if r['variant'] == 'bn':
            continue
        old = next((b for b in before if case_of(b) == case_of(r)), None)
        cells = []
        for key in ('train_ms', 'infer_ms'):
            for result, results in ((old, before), (r, after)):
                ratio = (
                    None
                    if result is None
                    else ratio_of(result, bn_base(results, result), key)
                )
                cells.append('-' if ratio is None else f'{ratio:.2f}')
        lines.append(
            f'| {r["model"]} | {r["batch"]} | {r["size"]} | '
            f'{r["variant"]} | ' + ' | '.join(cells) + ' |'
        )
    return '\n'.join(lines)


def format_sweep(runs, sweep, kernel_status):
    """The medians over runs of a sweep's runs and the tables printed of
    them: this checkout's (``tree='after'``) and, where the sweep ran
    another checkout too (``sweep.before``), that one's and the ratios to
    BN of both, side by side.

    Returns:
        tuple: ``(results, table)``, this checkout's results and the text.
    """
    trees = {}
    for r in runs:
        trees.setdefault(r['tree'], []).append(
            {k: v for k, v in r.items() if k != 'tree'}
        )
    results = median_over_runs(trees['after'])
    table = format_table(results, sweep, kernel_status)
    if 'before' in trees:
        before = median_over_runs(trees['before'])
        table += (
            f'\n\nBefore ({sweep.before}):\n'
            + format_table(before, sweep, 'as that checkout chooses')
            + '\n\nRatios to BN, before and after:\n'
            + format_before_after(before, results)
        )
    return results, table


def write_json(path, args, runs, results, sweep, table):
    """Write a sweep to ``path`` as JSON: the tool's ``args``, every run
    (with its tree), the results (:func:`format_sweep`), their
    :func:`summarise` and the printed ``table``."""
    summary = summarise(results, sweep.models, sweep.variants)
    with open(path, 'w') as f:
        json.dump(
            dict(
                args=args,
                results=results,
                runs=runs,
                summary=summary,
                table=table,
            ),
            f,
            indent=2,
        )
