"""The claims page: verdicts written between markers of a markdown page.

The page's prose (the design, the rules) is written by hand; everything
between ``<!-- claims:begin -->`` and ``<!-- claims:end -->`` is generated
from a study's results.json, so a rerun of the report updates the numbers
and nothing else.
"""

import os
import os.path as osp

from .claims import cell_summary, claims_markdown
from .records import atomic_write_text
from .spec import format_mult

BEGIN = '<!-- claims:begin -->'
END = '<!-- claims:end -->'


def claims_block(results: dict, study_dir: str, page: str) -> str:
    """The generated part of the page (markdown, without the markers).

    Args:
        results (dict): A study's results.json.
        study_dir (str): Where its table and plots are.
        page (str): The page's path (the plots are linked relative to it).
    """
    study, records = results['study'], results['runs']
    done = sum(
        r['status'] in ('finished', 'collapsed', 'diverged') for r in records
    )
    rel = osp.relpath(study_dir, osp.dirname(osp.abspath(page)))
    lines = [
        f'Study `{study["name"]}` ({study["spec"]}): {done} of '
        f'{len(records)} runs have an outcome. Metric: '
        f'{study["metric_label"]}, chance {study.get("chance")}.',
        '',
        claims_markdown(study, records, study.get('claims', [])),
        'Cells: runs with an outcome, the final metric (mean +- std over '
        'the runs that kept one), and how much the curves still rose in '
        'their last quarter (final minus the value at 3/4 of the epochs, '
        'mean over finished runs; near 0: flat).',
        '',
        '| normaliser | batch | lr x | runs done | final | late gain |',
        '|---|---|---|---|---|---|',
    ]
    labels = study['norms']
    for (norm, batch, mult), cell in cell_summary(study, records).items():
        gain = (
            '-' if cell['late_gain'] is None else f'{cell["late_gain"]:+.1f}'
        )
        final = '-' if cell['mean'] is None else f'{cell["mean"]:.1f}'
        if cell['std'] is not None:
            final += f' +- {cell["std"]:.1f}'
        lines.append(
            f'| {labels.get(norm, norm)} | {batch} | '
            f'{format_mult(mult)} | {cell["done"]} of '
            f'{cell["runs"]} | {final} | {gain} |'
        )
    lines += ['', f'Full table: [{rel}/table.md]({rel}/table.md).', '']
    for name, alt in (
        ('metric_vs_epoch.png', 'curves per setting'),
        ('metric_vs_batch.png', 'final metric vs batch'),
        ('metric_vs_lr.png', 'final metric vs lr'),
    ):
        if osp.isfile(osp.join(study_dir, name)):
            lines.append(f'![{alt}]({rel}/{name})')
    return '\n'.join(lines) + '\n'


def write_claims_page(results: dict, study_dir: str, page: str) -> None:
    """Replace the generated part of ``page`` (created, markers appended,
    where absent)."""
    text = ''
    if osp.isfile(page):
        with open(page) as f:
            text = f.read()
    if BEGIN not in text or END not in text:
        text = text.rstrip('\n') + f'\n\n{BEGIN}\n{END}\n'
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    block = claims_block(results, study_dir, page)
    os.makedirs(osp.dirname(osp.abspath(page)), exist_ok=True)
    atomic_write_text(page, f'{head}{BEGIN}\n{block}{END}{tail}')
