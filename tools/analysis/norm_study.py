"""Run a normaliser study: normalisers x batch sizes x lr multipliers x seeds.

    python tools/analysis/norm_study.py configs/studies/norm_study_ssdlite_shapes.py
    python tools/analysis/norm_study.py SPEC --quick            # the spec's 'quick' preset
    python tools/analysis/norm_study.py SPEC --dry-run          # list the runs and commands
    python tools/analysis/norm_study.py SPEC --report-only      # tables and plots of what is done

The study tests the DN paper's comparative claims (Tables 1, 3, 4, 8 and
Figure 3): DN-B against BN (and GN, SN, MABN) at the recipe's settings, at
smaller batches and at higher learning rates. A *spec* (an mmengine config
under ``configs/studies/``) names a base training config (any mmdet or
mmpretrain config), the normalisers (``configs/studies/_base_/norms.py``) and
the grid. Every run is one process of the normal training tool::

    python tools/train.py BASE --work-dir OUT/runs/<run> --cfg-options \\
        model.backbone.norm_cfg._delete_=True model.backbone.norm_cfg.type=DN ... \\
        train_dataloader.batch_size=2 optim_wrapper.optimizer.lr=0.0125 \\
        randomness.seed=0 randomness.deterministic=True [--resume]

so a GPU user runs the same study on COCO or ImageNet-100 by pointing the
spec at that base config.

The grid. ``grid='axes'`` (default) varies one factor at a time around the
reference point (the first batch size, the first lr multiplier), as the
paper does: the batch sizes at the reference lr (Table 4) and the lr
multipliers at the reference batch (Table 8); ``grid='full'`` runs every
combination. Runs are ordered seed by seed, so a study stopped early has
every cell with fewer seeds rather than some cells with all.

Learning rate. The multiplier scales the base config's lr (``lr_key``). With
``lr_scaling='none'`` (default) the lr does not follow the batch size: the
paper's small-batch rows keep the recipe's lr (Table 4: lr 0.2 at batch 64
and at batch 8), which is what makes small batches hard for BN.
``lr_scaling='linear'`` multiplies it by batch / reference batch (Goyal et
al.) instead. The schedule stays the base's, in epochs, so a smaller batch
takes more (noisier) steps.

Resume. Each run's state is ``OUT/runs/<run>/norm_study_run.json``. A run
that finished, collapsed or diverged is never redone; a run that was
interrupted (the study killed) continues from its last checkpoint with
``tools/train.py --resume``; a run that failed (any other error) is retried
by the next invocation. Killing the study kills its training process too
(Linux: the child dies with its parent).

Outcome of a run:

* ``finished``: training ended; final and best metric read from mmengine's
  ``vis_data/scalars.json`` logs;
* ``diverged``: training stopped with a ``NonFiniteError`` (the project's
  ``NonFiniteCheckHook``: a NaN/Inf loss, gradient, weight or statistic);
* ``collapsed``: training ended, but the final metric is at or below the
  spec's ``collapse_below`` (chance level: e.g. twice the chance accuracy of
  a classifier, a bbox mAP of ~0 for a detector), or no metric was logged
  at all (mmdet's ``CocoMetric`` logs none when no box passes the score
  threshold); it counts as diverged in the tables, and its metric, if any,
  still enters the means;
* ``failed``: any other error (its message is kept; retried next time).

Outputs in the study's directory (``work_dirs/norm_study/<spec>[_<preset>]``
or ``--work-dir``): ``results.json`` (the spec, every run's record with its
per-epoch curve, command, wall time and CPU time of its processes; a killed
segment's wall time counts until its last write, its CPU time is not
known), ``results.csv`` (one line a run),
``table.md`` (mean +- std over seeds per normaliser x batch x lr, diverged
counts) and the plots of ``norm_study_report.py``.
"""
import argparse
import contextlib
import csv
import ctypes
import datetime
import fcntl
import glob
import json
import math
import os
import os.path as osp
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

# Sibling tools (the scripts in tools/analysis are not a package).
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from norm_study_report import write_report  # noqa: E402
from plot_map import read_metric  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STATE_FILE = 'norm_study_run.json'
LOG_FILE = 'train.log'
# Outcomes that are final: the run is not redone by a later invocation.
FINAL = ('finished', 'collapsed', 'diverged')
GRIDS = ('axes', 'full')
LR_SCALINGS = ('none', 'linear')
KEEP_CHECKPOINTS = ('all', 'last', 'none')
BATCH_PLACEHOLDER = '{batch_size}'

# The spec's keys with their defaults (None: required).
SPEC_DEFAULTS = dict(
    base_config=None,
    metric=None,
    # 'greater' (accuracy, mAP) or 'less' (an error rate) is better.
    rule='greater',
    # Tables and plots show metric * metric_scale under metric_label.
    metric_scale=1.0,
    metric_label=None,
    collapse_below=None,
    norm_library=None,
    norms=None,
    norm_keys=['model.backbone.norm_cfg'],
    conv_keys=['model.backbone.conv_cfg'],
    batch_size_key='train_dataloader.batch_size',
    lr_key='optim_wrapper.optimizer.lr',
    lr_scaling='none',
    batch_sizes=None,
    lr_mults=[1],
    seeds=[0],
    grid='axes',
    deterministic=True,
    cfg_options={},
    train_script='tools/train.py',
    # Processes (GPUs) a run trains on; > 1 launches tools/dist_train.sh.
    # Batch sizes are per process: the batch BN's statistics see.
    gpus=1,
    keep_checkpoints='last',
    presets={},
)


class SpecError(ValueError):
    """A study spec that cannot be run (the message names the key)."""


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""
    norm: str
    batch_size: int
    lr_mult: float
    seed: int

    @property
    def name(self) -> str:
        return (f'{self.norm}_bs{self.batch_size}_lr{self.lr_mult:g}x_'
                f'seed{self.seed}')


class Study:
    """A study spec, read from its file, preset applied and checked.

    Args:
        spec_path (str): The spec file (an mmengine config).
        preset (str, optional): A name in the spec's ``presets``; its keys
            replace the spec's, except ``cfg_options``, which it updates.
        overrides (dict, optional): Keys replacing the spec's after the
            preset (the command line's ``--norms`` etc.).

    Raises:
        SpecError: A missing or invalid key, an unknown preset or norm.
    """

    def __init__(self,
                 spec_path: str,
                 preset: Optional[str] = None,
                 overrides: Optional[dict] = None):
        from mmengine.config import Config
        if not osp.isfile(spec_path):
            raise SpecError(f'study spec {spec_path} does not exist')
        self.spec_path = spec_path
        self.preset = preset
        raw = Config.fromfile(spec_path).to_dict()
        unknown = sorted(set(raw) - set(SPEC_DEFAULTS))
        if unknown:
            raise SpecError(f'{spec_path}: unknown key(s) {unknown}; a spec '
                            f'has {sorted(SPEC_DEFAULTS)}')
        spec = {**SPEC_DEFAULTS, **raw}
        if preset is not None:
            if preset not in spec['presets']:
                raise SpecError(f'{spec_path}: no preset {preset!r}; presets: '
                                f'{sorted(spec["presets"]) or "none"}')
            for key, value in spec['presets'][preset].items():
                if key not in SPEC_DEFAULTS or key == 'presets':
                    raise SpecError(f'{spec_path}: presets.{preset} sets '
                                    f'unknown key {key!r}')
                if key == 'cfg_options':
                    spec[key] = {**spec[key], **value}
                else:
                    spec[key] = value
        spec.update(overrides or {})
        for key, value in spec.items():
            if value is None and key not in ('metric_label', 'collapse_below'):
                raise SpecError(f'{spec_path}: {key} is required')
        self.spec = spec
        # The spec's keys as attributes: self.norms, self.grid, ...
        self.__dict__.update(spec)
        self._check()

    def _check(self) -> None:
        where = self.spec_path
        if self.grid not in GRIDS:
            raise SpecError(f'{where}: grid must be one of {GRIDS}, got '
                            f'{self.grid!r}')
        if self.lr_scaling not in LR_SCALINGS:
            raise SpecError(f'{where}: lr_scaling must be one of '
                            f'{LR_SCALINGS}, got {self.lr_scaling!r}')
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise SpecError(f'{where}: keep_checkpoints must be one of '
                            f'{KEEP_CHECKPOINTS}, got '
                            f'{self.keep_checkpoints!r}')
        if self.rule not in ('greater', 'less'):
            raise SpecError(f"{where}: rule must be 'greater' or 'less', got "
                            f'{self.rule!r}')
        for key, kind in (('batch_sizes', int), ('lr_mults', (int, float)),
                          ('seeds', int), ('norms', str)):
            values = self.spec[key]
            if (not isinstance(values, (list, tuple)) or not values or not all(
                    isinstance(v, kind) and not isinstance(v, bool)
                    for v in values)):
                raise SpecError(f'{where}: {key} must be a non-empty list '
                                f'of {getattr(kind, "__name__", "numbers")}, '
                                f'got {values!r}')
            if len(set(values)) != len(values):
                raise SpecError(f'{where}: {key} has duplicates: {values!r}')
        if any(b < 1 for b in self.batch_sizes):
            raise SpecError(f'{where}: batch_sizes must be >= 1, got '
                            f'{self.batch_sizes!r}')
        if (not isinstance(self.gpus, int) or isinstance(self.gpus, bool)
                or self.gpus < 1):
            raise SpecError(f'{where}: gpus must be an int >= 1, got '
                            f'{self.gpus!r}')
        if any(not m > 0 for m in self.lr_mults):
            raise SpecError(f'{where}: lr_mults must be > 0, got '
                            f'{self.lr_mults!r}')
        for name in self.norms:
            if name not in self.norm_library:
                raise SpecError(
                    f'{where}: norm {name!r} is not in norm_library '
                    f'(configs/studies/_base_/norms.py or the spec); known: '
                    f'{sorted(self.norm_library)}')
            entry = self.norm_library[name]
            if not isinstance(entry.get('norm_cfg'),
                              dict) or not entry['norm_cfg'].get('type'):
                raise SpecError(f'{where}: norm_library[{name!r}] needs a '
                                f"norm_cfg dict with a 'type'")
            extra = set(entry) - {
                'label', 'norm_cfg', 'conv_cfg', 'cfg_options'
            }
            if extra:
                raise SpecError(f'{where}: norm_library[{name!r}] has '
                                f'unknown key(s) {sorted(extra)}')

    # ------------------------------------------------------------------ #
    @property
    def name(self) -> str:
        stem = osp.splitext(osp.basename(self.spec_path))[0]
        return stem if self.preset is None else f'{stem}_{self.preset}'

    @property
    def base_config_path(self) -> str:
        path = self.base_config
        return path if osp.isabs(path) else osp.join(REPO, path)

    @property
    def reference(self):
        """(batch size, lr multiplier) that the axes grid varies around."""
        return self.batch_sizes[0], self.lr_mults[0]

    def label(self, norm: str) -> str:
        return self.norm_library[norm].get('label', norm)

    def cells(self) -> List[tuple]:
        """The (batch size, lr multiplier) settings of the grid."""
        if self.grid == 'full':
            return [(b, m) for m in self.lr_mults for b in self.batch_sizes]
        ref_batch, ref_mult = self.reference
        cells = [(b, ref_mult) for b in self.batch_sizes]
        return cells + [(ref_batch, m) for m in self.lr_mults[1:]]

    def runs(self) -> List[Run]:
        """Every run, seed by seed, then setting by setting."""
        return [
            Run(norm, batch, float(mult), seed) for seed in self.seeds
            for batch, mult in self.cells() for norm in self.norms
        ]


# ---------------------------------------------------------------------- #
# The base config and the options of a run
# ---------------------------------------------------------------------- #
def _get_key(tree: dict, key: str):
    """``tree[a][b][c]`` for ``key='a.b.c'``; KeyError if absent."""
    node = tree
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


class BaseConfig:
    """The study's base config, with the spec's ``cfg_options`` merged.

    Loading it imports the config's ``custom_imports`` (dn_mmdet, ...), so
    the normalisers' registry entries can be checked before any run starts.
    """

    def __init__(self, study: Study):
        from mmengine.config import Config
        path = study.base_config_path
        if not osp.isfile(path):
            raise SpecError(f'{study.spec_path}: base_config {path} does not '
                            'exist')
        cfg = Config.fromfile(path)
        try:
            cfg.merge_from_dict(dict(study.cfg_options))
        except Exception as err:
            raise SpecError(f'{study.spec_path}: cfg_options cannot be '
                            f'merged into {path}: {err}') from err
        self.path = path
        self.cfg = cfg
        self.tree = cfg.to_dict()
        try:
            self.lr = float(_get_key(self.tree, study.lr_key))
        except (KeyError, TypeError, ValueError):
            raise SpecError(f'{study.spec_path}: lr_key {study.lr_key!r} is '
                            f'not a number in {path}') from None
        try:
            _get_key(self.tree, study.batch_size_key)
        except KeyError:
            raise SpecError(f'{study.spec_path}: batch_size_key '
                            f'{study.batch_size_key!r} is not in '
                            f'{path}') from None
        for key in study.norm_keys:
            try:
                _get_key(self.tree, key)
            except KeyError:
                raise SpecError(f'{study.spec_path}: norm key {key!r} is not '
                                f'in {path}; set norm_keys to where the '
                                'norm_cfg is') from None
        train_cfg = cfg.get('train_cfg') or {}
        self.max_epochs = train_cfg.get('max_epochs')

    def check_registered(self, study: Study) -> None:
        """Raise if a selected normaliser's layer types are not registered.

        Raises:
            SpecError: naming the normaliser and the type.
        """
        from mmengine.registry import MODELS, init_default_scope
        scope = self.cfg.get('default_scope')
        if scope:
            init_default_scope(scope)
        for name in study.norms:
            entry = study.norm_library[name]
            for field in ('norm_cfg', 'conv_cfg'):
                cfg = entry.get(field)
                if cfg and MODELS.get(cfg['type']) is None:
                    raise SpecError(
                        f'norm {name!r}: {field} type {cfg["type"]!r} is not '
                        f'registered (after importing the custom_imports of '
                        f'{self.path}); is the layer implemented?')


def _substitute(value, batch_size: int):
    if isinstance(value, dict):
        return {k: _substitute(v, batch_size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, batch_size) for v in value)
    return batch_size if value == BATCH_PLACEHOLDER else value


def _flatten(prefix: str, value, out: Dict[str, Any]) -> None:
    """``{prefix: value}`` as dotted ``--cfg-options`` keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f'{prefix}.{k}', v, out)
    else:
        out[prefix] = value


def _replace(tree: dict, key: str, value, out: Dict[str, Any]) -> None:
    """Options that set ``key`` to ``value``, replacing what ``tree`` (the
    base config) has.

    A dict merges into the base's dict, so it is preceded by
    ``key._delete_=True``; mmengine only removes that marker (and the old
    dict) where the key exists, so it is left out where it does not.
    """
    if isinstance(value, dict):
        try:
            _get_key(tree, key)
            out[f'{key}._delete_'] = True
        except KeyError:
            pass
    _flatten(key, value, out)


def run_options(study: Study, base: BaseConfig, run: Run) -> Dict[str, Any]:
    """The config changes of ``run`` as ordered ``{dotted key: value}``:
    the spec's ``cfg_options``, the normaliser, batch size, lr and seed."""
    options: Dict[str, Any] = dict(study.cfg_options)
    entry = _substitute(study.norm_library[run.norm], run.batch_size)
    for field, keys in (('norm_cfg', study.norm_keys), ('conv_cfg',
                                                        study.conv_keys)):
        if field in entry:
            for key in keys:
                _replace(base.tree, key, entry[field], options)
    options.update(entry.get('cfg_options', {}))
    options[study.batch_size_key] = run.batch_size
    options[study.lr_key] = run_lr(study, base, run)
    options['randomness.seed'] = run.seed
    options['randomness.deterministic'] = bool(study.deterministic)
    return options


def run_lr(study: Study, base: BaseConfig, run: Run) -> float:
    lr = base.lr * run.lr_mult
    if study.lr_scaling == 'linear':
        lr *= run.batch_size / study.reference[0]
    return lr


def format_option(key: str, value) -> str:
    """``key=value`` as ``--cfg-options`` parses it back to ``value``.

    Raises:
        SpecError: a value ``--cfg-options`` cannot express (a string with
            a comma or that reads as a number, a dict inside a list, ...).
    """
    from mmengine.config import DictAction

    def text(v) -> str:
        if isinstance(v, (list, tuple)):
            inner = ','.join(text(x) for x in v)
            return f'[{inner}]' if isinstance(v, list) else f'({inner})'
        if isinstance(v, float):
            return repr(v)
        if v is None or isinstance(v, (bool, int, str)):
            return str(v)
        raise SpecError(f'cfg option {key}: cannot pass a {type(v).__name__}'
                        f' ({v!r}) on the command line')

    formatted = text(value)
    parsed = DictAction._parse_iterable(formatted)
    if _normalise(parsed) != _normalise(value):
        raise SpecError(f'cfg option {key}={value!r} would be read back as '
                        f'{parsed!r}; use a value --cfg-options can express')
    return f'{key}={formatted}'


def _normalise(v):
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return v


def train_command(study: Study, base: BaseConfig, run: Run, run_dir: str,
                  resume: bool) -> List[str]:
    """The ``tools/train.py`` command line of ``run``."""
    script = study.train_script
    if not osp.isabs(script):
        script = osp.join(REPO, script)
    if study.gpus > 1:
        launch = [
            'bash',
            osp.join(osp.dirname(script), 'dist_train.sh'), base.path,
            str(study.gpus)
        ]
    else:
        launch = [sys.executable, script, base.path]
    options = [
        format_option(k, v) for k, v in run_options(study, base, run).items()
    ]
    command = launch + ['--work-dir', run_dir, '--cfg-options', *options]
    return command + (['--resume'] if resume else [])


# ---------------------------------------------------------------------- #
# Run state and results
# ---------------------------------------------------------------------- #
def atomic_write_text(path: str, text: str) -> None:
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
    atomic_write_text(osp.join(run_dir, STATE_FILE), json.dumps(state,
                                                                indent=1))


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
    """``{epoch: value}`` of ``metric`` in the run's logs ({} if none)."""
    try:
        return read_metric(run_dir, metric)
    except (FileNotFoundError, ValueError):
        return {}


def _error_line(log_path: str, pattern: str) -> Optional[str]:
    """The last line of the log's tail matching ``pattern``."""
    if not osp.isfile(log_path):
        return None
    with open(log_path, 'rb') as f:
        f.seek(max(0, osp.getsize(log_path) - 65536))
        tail = f.read().decode('utf-8', 'replace').splitlines()
    matches = [line.strip() for line in tail if re.search(pattern, line)]
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
            'model.test_cfg.score_thr)')
    collapsed = (study.collapse_below is not None and
                 (not math.isfinite(final) or final <= study.collapse_below))
    return dict(status='collapsed' if collapsed else 'finished', error=None)


def run_outcome(study: Study, run_dir: str, returncode: int) -> dict:
    """Status, metrics and error of a run whose process ended."""
    curve = read_curve(run_dir, study.metric)
    outcome: Dict[str, Any] = dict(curve={str(k): v for k, v in curve.items()})
    if curve:
        pick = max if study.rule == 'greater' else min
        best_epoch = pick(curve, key=curve.get)
        last_epoch = max(curve)
        outcome.update(final=curve[last_epoch],
                       best=curve[best_epoch],
                       best_epoch=best_epoch,
                       last_epoch=last_epoch)
    else:
        outcome.update(final=None, best=None, best_epoch=None, last_epoch=None)
    log = osp.join(run_dir, LOG_FILE)
    nonfinite = _error_line(log, r'NonFiniteError')
    if returncode == 0:
        outcome.update(ended_status(study, outcome['final']))
    elif nonfinite is not None:
        outcome.update(status='diverged', error=nonfinite)
    else:
        outcome.update(status='failed',
                       error=_error_line(log, r'(Error|Exception|error:)')
                       or f'exit status {returncode}')
    outcome['returncode'] = returncode
    return outcome


def keep_checkpoints(run_dir: str, keep: str) -> None:
    """Free the disk once a run is over: ``'last'`` keeps the latest
    checkpoint's weights (no optimizer state), ``'none'`` keeps none."""
    if keep == 'all':
        return
    from dn_mmdet.utils.launch import find_resume_checkpoint
    latest = find_resume_checkpoint(run_dir)
    for path in glob.glob(osp.join(run_dir, '*.pth')):
        if keep == 'none' or path != latest:
            os.remove(path)
    if keep == 'last' and latest is not None:
        import torch
        from dn_mmdet.utils.compat import load_from_local
        checkpoint = load_from_local(latest, map_location='cpu')
        slim = {
            k: checkpoint[k]
            for k in ('meta', 'state_dict') if k in checkpoint
        }
        tmp = f'{latest}.{os.getpid()}.tmp'
        torch.save(slim, tmp)
        os.replace(tmp, latest)


def run_record(study: Study, base: BaseConfig, run: Run, run_dir: str,
               state: dict) -> dict:
    """What results.json says about ``run``."""
    record = dict(name=run.name,
                  **asdict(run),
                  norm_label=study.label(run.norm),
                  lr=run_lr(study, base, run),
                  work_dir=osp.relpath(run_dir, REPO)
                  if run_dir.startswith(REPO) else run_dir)
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


# ---------------------------------------------------------------------- #
# Running the grid
# ---------------------------------------------------------------------- #
def _die_with_parent() -> None:
    """In the child: get SIGKILL when the study process dies (Linux), so a
    killed study never leaves a training process writing to a run dir."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _count(items, noun: str) -> str:
    return f'{len(items)} {noun}{"" if len(items) == 1 else "s"}'


def _format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return '?'
    return str(datetime.timedelta(seconds=int(round(seconds))))


_TRAIN_PROGRESS = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')


def _progress_in_log(log_path: str) -> Optional[tuple]:
    """(epoch, iteration, iterations an epoch) of the log's last train line.
    """
    if not osp.isfile(log_path):
        return None
    with open(log_path, 'rb') as f:
        f.seek(max(0, osp.getsize(log_path) - 16384))
        matches = _TRAIN_PROGRESS.findall(f.read().decode('utf-8', 'replace'))
    return tuple(int(x) for x in matches[-1]) if matches else None


class StudyRunner:
    """Runs the grid of a :class:`Study` into ``out_dir``, resumably.

    Args:
        study (Study): The study.
        out_dir (str): The study's directory.
        env (dict, optional): Environment of the training processes.
        progress_interval (float): Seconds between progress lines while a
            run trains.
        echo (callable): Where progress lines go.
    """

    def __init__(self,
                 study: Study,
                 out_dir: str,
                 env: Optional[dict] = None,
                 progress_interval: float = 60.0,
                 echo=print):
        self.study = study
        self.out_dir = osp.abspath(out_dir)
        self.env = env
        self.progress_interval = progress_interval
        self.echo = lambda msg: echo(f'[norm_study] {msg}', flush=True)
        self.base = BaseConfig(study)

    def run_dir(self, run: Run) -> str:
        return osp.join(self.out_dir, 'runs', run.name)

    def records(self) -> List[dict]:
        records = []
        for run in self.study.runs():
            run_dir = self.run_dir(run)
            records.append(
                run_record(self.study, self.base, run, run_dir,
                           read_state(run_dir)))
        return records

    def write_results(self, plots: bool = False) -> List[dict]:
        """results.json, results.csv, table.md (and the plots)."""
        os.makedirs(self.out_dir, exist_ok=True)
        records = self.records()
        study = self.study
        summary = dict(
            name=study.name,
            spec=osp.relpath(osp.abspath(study.spec_path), REPO),
            preset=study.preset,
            base_config=study.base_config,
            base_lr=self.base.lr,
            max_epochs=self.base.max_epochs,
            metric=study.metric,
            rule=study.rule,
            metric_scale=study.metric_scale,
            metric_label=study.metric_label or study.metric,
            collapse_below=study.collapse_below,
            lr_scaling=study.lr_scaling,
            grid=study.grid,
            reference=dict(batch_size=study.reference[0],
                           lr_mult=study.reference[1]),
            norms={n: study.label(n)
                   for n in study.norms},
            batch_sizes=study.batch_sizes,
            lr_mults=study.lr_mults,
            seeds=study.seeds,
            cfg_options=study.cfg_options,
        )
        atomic_write_text(
            osp.join(self.out_dir, 'results.json'),
            json.dumps(dict(study=summary, runs=records), indent=1))
        _write_csv(osp.join(self.out_dir, 'results.csv'), records)
        write_report(summary, records, self.out_dir, plots=plots)
        return records

    def _lock(self):
        os.makedirs(self.out_dir, exist_ok=True)
        lock = open(osp.join(self.out_dir, '.norm_study.lock'), 'a+')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or '?'
            lock.close()
            raise RuntimeError(f'another norm_study (pid {holder}) is running '
                               f'in {self.out_dir}') from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    def run(self) -> int:
        """Run every run not yet done. Returns how many failed."""
        self.base.check_registered(self.study)
        lock = self._lock()
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return self._run_all()
        finally:
            signal.signal(signal.SIGTERM, previous)
            lock.close()

    def _run_all(self) -> int:
        runs = self.study.runs()
        todo, done_walls, diverged = [], [], 0
        for run in runs:
            state = read_state(self.run_dir(run))
            status = state.get('result', {}).get('status')
            if status in FINAL:
                done_walls.append(wall_time(state) or 0.0)
                diverged += status != 'finished'
            else:
                todo.append(run)
        total = len(runs)
        self.echo(f'{self.study.name}: {total} runs '
                  f'({_count(self.study.norms, "normaliser")} x '
                  f'{_count(self.study.cells(), "setting")} x '
                  f'{_count(self.study.seeds, "seed")}) in {self.out_dir}; '
                  f'{total - len(todo)} done already')
        failed = 0
        for index, run in enumerate(todo):
            mean = (sum(done_walls) / len(done_walls)) if done_walls else None
            eta = None if mean is None else mean * (len(todo) - index)
            self.echo(f'{total - len(todo) + index}/{total} runs done '
                      f'({diverged} diverged/collapsed, {failed} failed); '
                      f'ETA {_format_seconds(eta)}')
            outcome, wall = self._run_one(run, total - len(todo) + index + 1,
                                          total, mean)
            if outcome['status'] in FINAL:
                done_walls.append(wall)
                diverged += outcome['status'] != 'finished'
            else:
                failed += 1
            self.write_results()
        self.write_results(plots=True)
        self.echo(f'{total}/{total} runs done ({diverged} diverged/'
                  f'collapsed, {failed} failed); results in '
                  f'{self.out_dir}')
        return failed

    def _run_one(self, run: Run, position: int, total: int,
                 mean_wall: Optional[float]):
        run_dir = self.run_dir(run)
        state = read_state(run_dir)
        resume = has_checkpoint(run_dir)
        if not resume and osp.isdir(run_dir):
            # Interrupted before its first checkpoint: nothing to keep.
            shutil.rmtree(run_dir)
            state = {}
        os.makedirs(run_dir, exist_ok=True)
        close_open_segment(run_dir, state)
        state.pop('result', None)
        command = train_command(self.study, self.base, run, run_dir, resume)
        state.update(run=asdict(run), command=command)
        state.setdefault('segments', []).append([time.time(), None])
        write_state(run_dir, state)
        self.echo(
            f'run {position}/{total}: {run.name} '
            f'({self.study.label(run.norm)}, batch {run.batch_size}, '
            f'lr x{run.lr_mult:g} = {run_lr(self.study, self.base, run):.4g}, '
            f'seed {run.seed})'
            f'{", resuming from its last checkpoint" if resume else ""}'
            f'; log {osp.join(run_dir, LOG_FILE)}')
        returncode = self._train(command, run_dir, state, mean_wall)
        state['segments'][-1][1] = time.time()
        outcome = run_outcome(self.study, run_dir, returncode)
        state['result'] = outcome
        if outcome['status'] in FINAL:
            keep_checkpoints(run_dir, self.study.keep_checkpoints)
        write_state(run_dir, state)
        wall = wall_time(state)
        final = outcome.get('final')
        metric = ('no metric' if final is None else
                  f'final {self.study.metric} {final:.4g} '
                  f'(best {outcome["best"]:.4g} at epoch '
                  f'{outcome["best_epoch"]})')
        error = f': {outcome["error"]}' if outcome.get('error') else ''
        self.echo(f'run {position}/{total}: {run.name} {outcome["status"]}, '
                  f'{metric}, {_format_seconds(wall)}{error}')
        return outcome, wall

    def _train(self, command: List[str], run_dir: str, state: dict,
               mean_wall: Optional[float]) -> int:
        log_path = osp.join(run_dir, LOG_FILE)
        with open(log_path, 'a') as log:
            log.write(f'\n== norm_study: segment {len(state["segments"])}, '
                      f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n'
                      f'== {" ".join(command)}\n')
            log.flush()
            cpu = _children_cpu()
            # Its own process group, so that stopping the run reaches every
            # process of it (a distributed launch starts several).
            proc = subprocess.Popen(command,
                                    stdout=log,
                                    stderr=subprocess.STDOUT,
                                    cwd=REPO,
                                    env=self.env,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent)
            try:
                returncode = self._wait(proc, log_path, state, mean_wall)
                state['cpu_s'] = state.get('cpu_s',
                                           0.0) + _children_cpu() - cpu
                return returncode
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM): stop the run; the next
                # invocation resumes it from its last checkpoint.
                _stop_group(proc)
                state['segments'][-1][1] = time.time()
                write_state(run_dir, state)
                raise

    def _wait(self, proc, log_path: str, state: dict,
              mean_wall: Optional[float]) -> int:
        start = state['segments'][-1][0]
        next_report = time.time() + self.progress_interval
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if time.time() < next_report:
                continue
            next_report = time.time() + self.progress_interval
            progress = _progress_in_log(log_path)
            where = ''
            if progress is not None:
                epoch, it, per_epoch = progress
                of = (f'/{self.base.max_epochs}'
                      if self.base.max_epochs else '')
                where = f'epoch {epoch}{of}, iteration {it}/{per_epoch}, '
            self.echo(f'  ... {where}{_format_seconds(time.time() - start)} '
                      f'in this segment (a run takes '
                      f'{_format_seconds(mean_wall)} on average)')


def _write_csv(path: str, records: Sequence[dict]) -> None:
    columns = [
        'name', 'norm', 'norm_label', 'batch_size', 'lr_mult', 'lr', 'seed',
        'status', 'final', 'best', 'best_epoch', 'last_epoch', 'wall_s',
        'cpu_s', 'error', 'work_dir'
    ]
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- #
# Command line
# ---------------------------------------------------------------------- #
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Run a normaliser study (normalisers x batch sizes x lr '
        'multipliers x seeds), resumably, and write its results, table and '
        'plots')
    parser.add_argument('spec', help='study spec (configs/studies/*.py)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--preset',
                       help="a preset of the spec's `presets` (e.g. quick)")
    group.add_argument(
        '--quick',
        action='store_const',
        const='quick',
        dest='preset',
        help='the `quick` preset (about 15 minutes on a 2-core CPU)')
    parser.add_argument(
        '--work-dir',
        help='study directory (default: work_dirs/norm_study/<spec>[_<preset>])'
    )
    parser.add_argument('--norms', nargs='+', help='only these normalisers')
    parser.add_argument('--batch-sizes',
                        nargs='+',
                        type=int,
                        help='override batch_sizes')
    parser.add_argument('--lr-mults',
                        nargs='+',
                        type=float,
                        help='override lr_mults')
    parser.add_argument('--seeds', nargs='+', type=int, help='override seeds')
    parser.add_argument(
        '--threads',
        type=int,
        help='CPU threads of each training process (OMP_NUM_THREADS)')
    parser.add_argument(
        '--progress-interval',
        type=float,
        default=60.0,
        help='seconds between progress lines while a run trains')
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the runs and their commands, train nothing')
    parser.add_argument(
        '--report-only',
        action='store_true',
        help='write results, table and plots from the runs done, train '
        'nothing')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in (('norms', args.norms), ('batch_sizes',
                                                   args.batch_sizes),
                           ('lr_mults', args.lr_mults), ('seeds', args.seeds))
        if value is not None
    }
    try:
        study = Study(args.spec, args.preset, overrides)
        out_dir = args.work_dir or osp.join('work_dirs', 'norm_study',
                                            study.name)
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO] + [p for p in [env.get('PYTHONPATH')] if p])
        if args.threads:
            env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(args.threads)
        runner = StudyRunner(study, out_dir, env, args.progress_interval)
        if args.dry_run:
            for run in study.runs():
                run_dir = runner.run_dir(run)
                print(' '.join(
                    train_command(study, runner.base, run, run_dir,
                                  has_checkpoint(run_dir))))
            print(f'{len(study.runs())} runs')
            return 0
        if args.report_only:
            runner.write_results(plots=True)
            print(f'results in {runner.out_dir}')
            return 0
        failed = runner.run()
    except (SpecError, RuntimeError) as err:
        sys.exit(f'norm_study: error: {err}')
    except (KeyboardInterrupt, _Terminated):
        print(
            '[norm_study] interrupted; run the same command again to '
            'resume',
            flush=True)
        return 130
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
