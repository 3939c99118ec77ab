"""A run's state file, its outcome and the record ``results.json`` keeps.

Each run's state is ``OUT/runs/<run>/norm_study_run.json``: its command,
its segments (start, end) of wall time, its CPU time and, once its process
ended, its ``result``.

Outcome of a run:

* ``finished``: training ended; final and best metric read from mmengine's
  ``vis_data/scalars.json`` logs;
* ``diverged``: training stopped with a ``NonFiniteError`` (the project's
  ``NonFiniteCheckHook``: a NaN/Inf loss, gradient, weight or statistic);
* ``collapsed``: training ended, but the final metric is at or below the
  spec's ``collapse_below``, or no metric was logged at all (mmdet's
  ``CocoMetric`` logs none when no box passes the score threshold);
* ``failed``: any other error (its message is kept; retried next time).
"""

import csv
import glob
import json
import math
import os
import os.path as osp
import re
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from .options import BaseConfig, run_lr
from .spec import PROJECT_ROOT, Run, Study

STATE_FILE = 'norm_study_run.json'
LOG_FILE = 'train.log'
# Outcomes that are final: the run is not redone by a later invocation.
FINAL = ('finished', 'collapsed', 'diverged')
CSV_COLUMNS = [
    'name',
    'norm',
    'norm_label',
    'batch_size',
    'lr_mult',
    'lr',
    'seed',
    'status',
    'final',
    'best',
    'best_epoch',
    'last_epoch',
    'wall_s',
    'cpu_s',
    'error',
    'work_dir',
]


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader
    never sees half of it."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(run_dir: str) -> dict:
    path = osp.join(run_dir, STATE_FILE)
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_state(run_dir: str, state: dict) -> None:
    atomic_write_text(
        osp.join(run_dir, STATE_FILE), json.dumps(state, indent=1)
    )


def has_checkpoint(run_dir: str) -> bool:
    from dn_mmdet.utils.launch import find_resume_checkpoint

    return osp.isdir(run_dir) and find_resume_checkpoint(run_dir) is not None


def _newest_mtime(run_dir: str) -> Optional[float]:
    times = [
        osp.getmtime(p)
        for p in glob.glob(osp.join(run_dir, '**', '*'), recursive=True)
        if osp.isfile(p) and osp.basename(p) != STATE_FILE
    ]
    return max(times) if times else None


def close_open_segment(run_dir: str, state: dict) -> None:
    """A segment without an end was killed: it ended at its last write."""
    for segment in state.get('segments', []):
        if segment[1] is None:
            segment[1] = max(segment[0], _newest_mtime(run_dir) or 0)


def wall_time(state: dict) -> Optional[float]:
    segments = [s for s in state.get('segments', []) if s[1] is not None]
    return sum(end - start for start, end in segments) if segments else None


def read_curve(run_dir: str, metric: str) -> Dict[int, float]:
    """``{epoch: value}`` of ``metric`` in the ``*/vis_data/scalars.json``
    logs under ``run_dir`` (oldest first: a resumed run's later segment
    wins), {} if none holds it. Lines that are not json (a log cut by a
    kill) are skipped."""
    values: Dict[int, float] = {}
    # Timestamped folders (YYYYmmdd_HHMMSS) sort in time order.
    for path in sorted(
        glob.glob(
            osp.join(run_dir, '**', 'vis_data', 'scalars.json'), recursive=True
        )
    ):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if metric in record and 'step' in record:
                    values[int(record['step'])] = float(record[metric])
    return dict(sorted(values.items()))


def _log_tail(log_path: str) -> List[str]:
    """The lines of the log's last 64 KiB (none without a log)."""
    if not osp.isfile(log_path):
        return []
    with open(log_path, 'rb') as f:
        f.seek(max(0, osp.getsize(log_path) - 65536))
        return f.read().decode('utf-8', 'replace').splitlines()


def _last_match(lines: List[str], pattern: str) -> Optional[str]:
    """The last of ``lines`` matching ``pattern``, stripped and cut to 500
    characters."""
    matches = [line.strip() for line in lines if re.search(pattern, line)]
    return matches[-1][:500] if matches else None


def ended_status(study: Study, final: Optional[float]) -> dict:
    """``status`` (and ``error``) of a run whose training ended normally:
    collapsed at or below ``collapse_below`` or without a metric, else
    finished."""
    if final is None:
        # mmdet's CocoMetric logs nothing when no box passes the test score
        # threshold: a detector that predicts nothing.
        return dict(
            status='collapsed',
            error=f'no {study.metric} was logged: the validation produced '
            'no result (for a detector: no box above '
            'model.test_cfg.score_thr)',
        )
    collapsed = study.collapse_below is not None and (
        not math.isfinite(final) or final <= study.collapse_below
    )
    return dict(status='collapsed' if collapsed else 'finished', error=None)


def run_outcome(
    study: Study,
    run_dir: str,
    returncode: int,
    max_epochs: Optional[int] = None,
) -> dict:
    """Status, metrics and error of a run whose process ended.

    A run that ended normally without validating its last epoch
    (``max_epochs``) failed: mmengine's ``CheckpointHook`` saves an epoch's
    checkpoint before it validates the epoch, so a run stopped in between
    and resumed from that checkpoint ends at once, and its last logged
    metric is an earlier epoch's. (The project's runtime configs save with
    :class:`~dn_mmdet.engine.hooks.CheckpointAfterValHook`, which leaves no
    such run; a config with mmengine's hook can.)
    """
    curve = read_curve(run_dir, study.metric)
    outcome: Dict[str, Any] = dict(curve={str(k): v for k, v in curve.items()})
    if curve:
        pick = max if study.rule == 'greater' else min
        best_epoch = pick(curve, key=curve.get)
        last_epoch = max(curve)
        outcome.update(
            final=curve[last_epoch],
            best=curve[best_epoch],
            best_epoch=best_epoch,
            last_epoch=last_epoch,
        )
    else:
        outcome.update(final=None, best=None, best_epoch=None, last_epoch=None)
    tail = _log_tail(osp.join(run_dir, LOG_FILE))
    nonfinite = _last_match(tail, r'NonFiniteError')
    # The curve holds every validated epoch. (Without any metric, the
    # validation logged none: ended_status says so.)
    unvalidated = (
        returncode == 0
        and max_epochs is not None
        and curve
        and outcome['last_epoch'] != max_epochs
    )
    if unvalidated:
        outcome.update(
            status='failed',
            error=f'epoch {max_epochs}, the last, was never validated: the '
            'run stopped after saving its checkpoint and before validating '
            'it, and resumed from it with nothing left to train. Evaluate '
            'that checkpoint with tools/test.py, or delete the run folder '
            'to train the run again',
        )
    elif returncode == 0:
        outcome.update(ended_status(study, outcome['final']))
    elif nonfinite is not None:
        outcome.update(status='diverged', error=nonfinite)
    else:
        outcome.update(
            status='failed',
            error=_last_match(tail, r'(Error|Exception|error:)')
            or f'exit status {returncode}',
        )
    outcome['returncode'] = returncode
    return outcome


def keep_checkpoints(run_dir: str, keep: str) -> None:
    """Free the disk once a run is over: ``'last'`` keeps the latest
    checkpoint's weights (no optimizer state), ``'none'`` keeps none."""
    if keep == 'all':
        return
    from dn_mmdet.utils.compat import load_from_local
    from dn_mmdet.utils.launch import find_resume_checkpoint

    latest = find_resume_checkpoint(run_dir)
    for path in glob.glob(osp.join(run_dir, '*.pth')):
        if keep == 'none' or path != latest:
            os.remove(path)
    if keep == 'last' and latest is not None:
        import torch

        checkpoint = load_from_local(latest, map_location='cpu')
        slim = {
            k: checkpoint[k] for k in ('meta', 'state_dict') if k in checkpoint
        }
        tmp = f'{latest}.{os.getpid()}.tmp'
        torch.save(slim, tmp)
        os.replace(tmp, latest)


def run_record(
    study: Study, base: BaseConfig, run: Run, run_dir: str, state: dict
) -> dict:
    """What results.json says about ``run``."""
    inside = run_dir.startswith(PROJECT_ROOT + os.sep)
    record = dict(
        name=run.name,
        **asdict(run),
        norm_label=study.label(run.norm),
        lr=run_lr(study, base, run),
        work_dir=osp.relpath(run_dir, PROJECT_ROOT) if inside else run_dir,
    )
    result = state.get('result')
    if result is None:
        record.update(status='pending', wall_s=wall_time(state))
        return record
    record.update(result)
    if result['status'] in ('finished', 'collapsed'):
        # The threshold is the spec's current one (it may have changed
        # since the run ended).
        record.update(ended_status(study, result.get('final')))
    record['wall_s'] = wall_time(state)
    record['cpu_s'] = state.get('cpu_s')
    record['command'] = state.get('command')
    return record


def study_summary(study: Study, base: BaseConfig) -> dict:
    """The ``study`` part of results.json (what the report reads)."""
    spec = osp.abspath(study.spec_path)
    return dict(
        name=study.name,
        spec=osp.relpath(spec, PROJECT_ROOT)
        if spec.startswith(PROJECT_ROOT + os.sep)
        else spec,
        preset=study.preset,
        base_config=study.base_config,
        base_lr=base.lr,
        max_epochs=base.max_epochs,
        metric=study.metric,
        rule=study.rule,
        metric_scale=study.metric_scale,
        metric_label=study.metric_label or study.metric,
        collapse_below=study.collapse_below,
        chance=study.chance,
        threads=study.threads,
        lr_scaling=study.lr_scaling,
        grid=study.grid,
        reference=dict(
            batch_size=study.reference[0], lr_mult=study.reference[1]
        ),
        norms={n: study.label(n) for n in study.norms},
        batch_sizes=study.batch_sizes,
        lr_mults=study.lr_mults,
        seeds=study.seeds,
        cfg_options=study.cfg_options,
        batch_cfg_options=study.batch_cfg_options,
        claims=study.claims,
    )


def write_csv(path: str, records: Sequence[dict]) -> None:
    """One line a run, the columns of :data:`CSV_COLUMNS`."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, path)


def runs_lost(
    old_records: Sequence[dict], new_records: Sequence[dict]
) -> List[str]:
    """Names of the runs with a final outcome in ``old_records`` (the
    results.json on disk) that ``new_records`` would drop or turn back into
    pending: what writing ``new_records`` over it would lose."""
    new = {r['name']: r.get('status') for r in new_records}
    return [
        r['name']
        for r in old_records
        if r.get('status') in FINAL and new.get(r['name']) not in FINAL
    ]
