"""Tables and plots of a normaliser study, from its run records.

:func:`write_report` writes into the study's directory ``table.md``
(:mod:`.tables`) and the figures ``metric_vs_batch.png``,
``metric_vs_lr.png`` and ``metric_vs_epoch.png`` (:mod:`.plots`, which
says what they show).
"""

import os.path as osp
from typing import List, Sequence

from .plots import plot_curves, plot_sweeps
from .records import atomic_write_text
from .tables import table_markdown

__all__ = ['write_report']


def write_report(
    study: dict, records: Sequence[dict], out_dir: str, plots: bool = True
) -> List[str]:
    """table.md and, with ``plots``, the figures. Returns the files.

    Args:
        study (dict): The ``study`` part of results.json.
        records (Sequence[dict]): The run records.
        out_dir (str): The study's directory.
        plots (bool): Draw the figures too (when a run has a curve).
            Defaults to True.
    """
    path = osp.join(out_dir, 'table.md')
    atomic_write_text(path, table_markdown(study, records))
    written = [path]
    if plots and any(r.get('curve') for r in records):
        written += plot_sweeps(study, records, out_dir)
        written.append(plot_curves(study, records, out_dir))
    return written
