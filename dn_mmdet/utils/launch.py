"""Helpers shared by ``tools/train.py``, ``tools/test.py`` and the tools
beside them (``tools/deployment/``).

They turn command-line input into a config with errors that name what was
wrong, give the test tools their common flags and result lines, find the
checkpoint to resume from, and probe the CPU (bf16, idle cores); starting
and ending distributed runs is :mod:`.distributed`'s.
"""

import argparse
import glob
import logging
import os
import os.path as osp
import pickle
import re
import time
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint

from .checkpoint import CheckpointMismatchError
from .compat import CheckpointReadError, safe_checkpoint_loading

__all__ = [
    'CfgOptionsAction',
    'add_test_args',
    'print_test_metrics',
    'load_config',
    'drop_disabled_hooks',
    'default_work_dir',
    'check_file',
    'find_resume_checkpoint',
    'checkpoint_seed',
    'cpu_has_native_bf16',
    'idle_cores',
    'CHECKPOINT_ERRORS',
]

#: What loading a checkpoint raises with a message that names the file or
#: layer and says what to do: the tools print it as one line, no traceback.
CHECKPOINT_ERRORS = (
    CheckpointReadError,
    pickle.UnpicklingError,
    CheckpointMismatchError,
)


class CfgOptionsAction(DictAction):
    """``--cfg-options key=value ...`` with a usage error on a malformed item.

    mmengine's :class:`~mmengine.config.DictAction` fails with a bare
    ``ValueError`` on an item without ``=``; this reports the item instead.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            key = item.split('=', 1)[0]
            if '=' not in item or not key:
                parser.error(
                    f'{option_string}: expected KEY=VALUE, got {item!r}'
                )
        try:
            super().__call__(parser, namespace, values, option_string)
        except Exception as err:  # malformed value, e.g. '[1,2'
            parser.error(f'{option_string}: cannot parse {values}: {err}')


class _PickleFileAction(argparse.Action):
    """``--out FILE``: a usage error unless FILE ends with .pkl/.pickle."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values.endswith(('.pkl', '.pickle')):
            parser.error(
                f'{option_string} must be a .pkl or .pickle file, got {values}'
            )
        setattr(namespace, self.dest, values)


def add_test_args(parser: argparse.ArgumentParser, work_dir_help: str) -> None:
    """Add the flags of mmdet's ``tools/test.py`` that the test tools share
    (``tools/test.py``, ``tools/deployment/test_onnx.py``): ``--work-dir``,
    ``--out`` (a .pkl / .pickle file, else a usage error) and
    ``--cfg-options``.

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
        work_dir_help (str): Help of ``--work-dir`` (the tools' default
            folders differ).
    """
    parser.add_argument('--work-dir', help=work_dir_help)
    parser.add_argument(
        '--out',
        action=_PickleFileAction,
        help='dump the predictions to this pickle file (.pkl / .pickle)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override config settings, KEY=VALUE pairs, e.g. '
        'test_dataloader.batch_size=1; no spaces in a pair',
    )


def print_test_metrics(metrics: dict, heading: str, score_thr: str) -> None:
    """Print a test's metrics, one a line, then the headline (bbox mAP or
    top-1 accuracy).

    Args:
        metrics (dict): What the evaluator returned.
        heading (str): The first line (``'Test results:'``).
        score_thr (str): How the config's score threshold reads in the
            line printed when there are no metrics (mmdet's ``CocoMetric``
            returns nothing when no box was predicted: pycocotools cannot
            load an empty result; that is mAP 0).
    """
    width = max((len(key) for key in metrics), default=0)
    print(f'\n{heading}')
    for key, value in metrics.items():
        print(f'  {key:<{width}}  {value}')
    if 'coco/bbox_mAP' in metrics:
        print(f'bbox mAP: {metrics["coco/bbox_mAP"]:.4f}')
    elif 'accuracy/top1' in metrics:  # mmpretrain reports percentages
        print(f'top-1 accuracy: {metrics["accuracy/top1"]:.2f}%')
    elif not metrics:
        print(f'bbox mAP: 0.0000 (no detection scored above {score_thr})')


def check_file(path: str, what: str) -> str:
    """Return ``path`` if it is an existing file, else raise naming it.

    Args:
        path (str): The path given on the command line.
        what (str): What the file is, for the message ('config file', ...).

    Returns:
        str: ``path`` unchanged.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
    """
    if not osp.isfile(path):
        hint = ' (it is a directory)' if osp.isdir(path) else ''
        raise FileNotFoundError(f'{what} {path} does not exist{hint}.')
    return path


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and merge ``--cfg-options`` into it.

    Args:
        path (str): The config file.
        cfg_options (dict, optional): Parsed ``--cfg-options``.

    Returns:
        Config: The merged config, without ``default_hooks`` set to None
        (see :func:`drop_disabled_hooks`), whose text (``pretty_text``:
        the log's config, the work dir's copy, every checkpoint's
        ``meta['cfg']``) is written without yapf's formatting
        (``format_python_code=False``): the same config, one key a line,
        without the formatting pass that made each write slow.

    Raises:
        FileNotFoundError: If the config file does not exist.
        ValueError: If an option cannot be merged (e.g. a list index that
            does not exist); the message names the option.
    """
    cfg = Config.fromfile(check_file(path, 'Config file'))
    for key, value in (cfg_options or {}).items():
        try:
            cfg.merge_from_dict({key: value})
        except Exception as err:
            raise ValueError(
                f'--cfg-options {key}={value!r} cannot be merged '
                f'into {path}: {err}'
            ) from err
    drop_disabled_hooks(cfg)
    # Config.fromfile passes format_python_code on only for lazy-import
    # (pure Python) configs, so set it here.
    return Config(
        cfg.to_dict(),
        cfg_text=cfg.text,
        filename=cfg.filename,
        env_variables=cfg.env_variables,
        format_python_code=False,
    )


def drop_disabled_hooks(cfg: Config) -> None:
    """Remove ``default_hooks`` entries set to None.

    mmengine accepts ``default_hooks.NAME=None`` only for its own six default
    hooks and fails an assertion for the others (``visualization``,
    ``epoch_seed``); dropping the entry disables any of them the same way.

    Args:
        cfg (Config): The config; modified in place.
    """
    hooks = cfg.get('default_hooks')
    if hooks:
        for name in [name for name, hook in hooks.items() if hook is None]:
            hooks.pop(name)


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config file stem>``, mmdet's default work_dir."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def _step_of(path: str) -> int:
    match = re.search(r'(\d+)\.pth$', osp.basename(path))
    return int(match.group(1)) if match else -1


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint an auto-resume (``--resume`` without a path) should use.

    mmengine records the latest checkpoint's absolute path in
    ``<work_dir>/last_checkpoint``. That file is trusted when it names an
    existing file; otherwise (missing, empty, or naming a file that is gone,
    e.g. after the work_dir was moved) the same name inside ``work_dir`` and
    then the highest-numbered ``epoch_*.pth``/``iter_*.pth`` are tried.

    Args:
        work_dir (str): The run's work directory.

    Returns:
        str or None: The checkpoint path, or None if there is none.
    """
    record = osp.join(work_dir, 'last_checkpoint')
    recorded = ''
    if osp.isfile(record):
        with open(record) as f:
            recorded = f.read().strip()
    if recorded:
        candidates = [recorded, osp.join(work_dir, osp.basename(recorded))]
        for candidate in candidates:
            if osp.isfile(candidate):
                return candidate
    found = glob.glob(osp.join(work_dir, 'epoch_*.pth')) + glob.glob(
        osp.join(work_dir, 'iter_*.pth')
    )
    if not found:
        return None
    latest = max(found, key=_step_of)
    if recorded or osp.isfile(record):
        print_log(
            f'{record} names {recorded!r}, which does not exist; resuming '
            f'from the latest checkpoint found instead: {latest}',
            logger='current',
            level=logging.WARNING,
        )
    return latest


def checkpoint_seed(path: str) -> Optional[int]:
    """The random seed a checkpoint's run used (``meta.seed``), if recorded.

    Args:
        path (str): A checkpoint written by mmengine's runner.

    Returns:
        int or None: The seed.
    """
    with safe_checkpoint_loading():
        checkpoint = _load_checkpoint(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return (meta or {}).get('seed')


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Without it, oneDNN emulates bf16 and bf16 autocast is several times
    slower than float32 (README, "Mixed precision"). torch exposes the test
    only privately; if it is missing, the answer is True (no warning).
    """
    probes = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    found = [getattr(torch.cpu, name, None) for name in probes]
    return any(probe is None or probe() for probe in found)


def _cpu_times(stat_path: str) -> Sequence[int]:
    with open(stat_path) as f:
        return [int(v) for v in f.readline().split()[1:]]


def idle_cores(interval: float = 1.0, stat_path: str = '/proc/stat') -> int:
    """How many of this process's cores no other process used just now.

    Samples the kernel's CPU time counters ``interval`` seconds apart (idle
    and iowait against the total, as ``top`` does) and rounds the idle share
    of the cores this process may run on; at least 1. Without
    ``stat_path`` (not Linux) it is every core this process may use.
    ``tools/quickstart.sh`` gives torch this many threads: an OpenMP thread
    that shares its core with a busy process stalls every parallel region,
    so on a 2-core machine with one busy core one thread trains faster than
    two (docs/en/get_started.md has the measurements).

    Args:
        interval (float): Seconds between the two samples.
        stat_path (str): The kernel's counters (``/proc/stat`` format).

    Returns:
        int: Between 1 and the number of usable cores.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        before = _cpu_times(stat_path)
        time.sleep(interval)
        after = _cpu_times(stat_path)
    except (OSError, ValueError):
        return cores
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent[:8])  # user .. steal; guest time is inside user
    if total <= 0:
        return cores
    idle_share = (spent[3] + spent[4]) / total  # idle, iowait
    online = os.cpu_count() or cores
    return max(1, min(cores, round(idle_share * online)))
