"""Normaliser studies: a grid of real training runs, resumable, reported.

``spec`` reads and checks a study spec (``configs/studies/*.py``);
``options`` turns a run into a ``tools/train.py`` command; ``records``
keeps a run's state and outcome; ``supervise`` keeps training processes
from outliving the study; ``runner`` runs the grid; ``report`` writes the
table (``tables``) and plots (``plots``); ``claims`` judges the
paper's claims on the runs.
"""

from .claims import claims_markdown, judge, welch_interval
from .options import (
    BaseConfig,
    format_option,
    run_lr,
    run_max_epochs,
    run_options,
    train_command,
)
from .records import FINAL, read_curve, run_outcome
from .report import write_report
from .runner import StudyError, StudyRunner, Terminated
from .spec import PROJECT_ROOT, Run, SpecError, Study, format_mult
from .tables import aggregate, table_markdown

__all__ = [
    'BaseConfig',
    'FINAL',
    'PROJECT_ROOT',
    'Run',
    'SpecError',
    'Study',
    'StudyError',
    'StudyRunner',
    'Terminated',
    'aggregate',
    'claims_markdown',
    'format_mult',
    'format_option',
    'judge',
    'read_curve',
    'run_lr',
    'run_max_epochs',
    'run_options',
    'run_outcome',
    'table_markdown',
    'train_command',
    'welch_interval',
    'write_report',
]
