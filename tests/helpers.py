"""What the tests share besides fixtures: the repository's paths, the
shapes configs, a free TCP port, and the one way to run the project's
python in a subprocess.

Fixtures stay in tests/conftest.py; this module holds plain constants and
functions, imported by name (``from helpers import REPO, run_python``):
pytest puts tests/ on ``sys.path`` because tests/conftest.py lives there
(rootdir-relative ``prepend`` import mode), in pytest-xdist's workers too.
"""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional, Sequence, Union

#: The repository's root (the folder holding ``dn_mmdet/`` and ``tools/``).
REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
CONFIGS = REPO / 'configs'

#: The CPU shapes configs, by norm: BN, DN-B (r=16, g=oup), SN, MABN.
SHAPES_CONFIGS = {
    'bn': CONFIGS / 'ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py',
    'dn': CONFIGS / 'ssdlite/'
    'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py',
    'sn': CONFIGS / 'ssdlite/ssdlite_mobilenetv2-sn_1xb16-cpu_shapes.py',
    'mabn-cenconv': CONFIGS / 'ssdlite/'
    'ssdlite_mobilenetv2-mabn-cenconv_1xb16-cpu_shapes.py',
}

PathLike = Union[str, os.PathLike]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a
    ``torch.distributed`` rendezvous; the OS picks it, so parallel test
    workers get different ones)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def subprocess_env(**overrides: str) -> Dict[str, str]:
    """Environment of a subprocess running the project's code.

    The repository importable (first on ``PYTHONPATH``), the project's
    python found without activating it (``DN_MMDET_VENV``, read by the
    shell tools), no display, one OpenMP thread a process unless the
    caller's environment says otherwise (torch's default of a thread a core
    is several times slower when the suite's workers share the cores).

    Args:
        overrides: Variables to set on top (e.g. ``PORT='29512'``).

    Returns:
        dict: A copy of ``os.environ`` with the above applied.
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p]
    )
    env['DN_MMDET_VENV'] = sys.prefix
    env.pop('DISPLAY', None)
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update(overrides)
    return env


def run_python(
    args: Sequence[PathLike],
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[PathLike] = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``python args...`` with the interpreter running the tests.

    Args:
        args: Arguments after the interpreter (a script and its flags,
            ``['-m', 'torch.distributed.run', ...]``, ``['-c', code]``).
        env: The environment; :func:`subprocess_env` if not given.
        cwd: Working directory (the caller's if not given).
        timeout: Seconds before the child is killed (a hung child fails
            its test instead of the whole suite).

    Returns:
        subprocess.CompletedProcess: With ``returncode``, and ``stdout`` and
        ``stderr`` as text.
    """
    return subprocess.run(
        [sys.executable, *map(str, args)],
        env=subprocess_env() if env is None else env,
        cwd=None if cwd is None else str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_tail(proc: subprocess.CompletedProcess, chars: int = 3000) -> str:
    """The last ``chars`` of a finished child's stdout and of its stderr,
    for an assertion message."""
    return (proc.stdout or '')[-chars:] + (proc.stderr or '')[-chars:]


def load_module(path: PathLike, name: Optional[str] = None) -> ModuleType:
    """Import the Python file at ``path`` as a module named ``name`` (its
    stem by default), registered in ``sys.modules`` so that what it defines
    pickles. A second call with the same name returns the first module.

    Args:
        path: A ``.py`` file (a script under tools/, a worker beside a test).
        name: The module's name in ``sys.modules``.
    """
    path = Path(path)
    name = name or path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None:
            raise ImportError(f'cannot import {path} as a module')
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def cfg_options_dict(items: Sequence[str]) -> dict:
    """``--cfg-options`` items (``KEY=VALUE`` strings, as ``shapes_options``
    gives them) as the dict ``tools/train.py`` merges, parsed by the same
    argparse action."""
    import argparse

    from dn_mmdet.utils.launch import CfgOptionsAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    return parser.parse_args(['--cfg-options', *items]).cfg_options


def cls_options(root: PathLike, batch_size: int = 4) -> list:
    """``--cfg-options`` pointing the CPU classifier configs
    (configs/mobilenet_v2/*_shapes-cls.py) at the shape crops in ``root``:
    batches of ``batch_size``, one epoch, no worker processes, one log line
    an iteration, seed 0."""
    options = [
        f'train_dataloader.batch_size={batch_size}',
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
    ]
    for loader in ('train', 'val', 'test'):
        options += [
            f'{loader}_dataloader.dataset.data_root={root}/',
            f'{loader}_dataloader.dataset.classes={root}/meta/classes.txt',
            f'{loader}_dataloader.num_workers=0',
            f'{loader}_dataloader.batch_size={batch_size}',
        ]
    return options
