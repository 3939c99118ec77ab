"""Helpers of the tools tests: the repo paths, the tools loaded as modules,
and the options that point the CPU shapes config at a tiny data set and
shrink it to seconds an epoch."""
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'


def load_tool(name):
    """``tools/<name>.py`` as a module (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        f'tools_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_options(data_root, max_epochs=3, seed=0):
    """``--cfg-options`` for a fast, deterministic run on ``data_root``.

    Batches of 2 (the last one dropped: BN needs 2 samples at the 1x1 maps),
    no worker processes, one log line an iteration, a fixed seed in
    deterministic mode.
    """
    root = f'{data_root}/'
    ann = f'{data_root}/annotations/instances_val.json'
    options = [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
        'train_dataloader.batch_size=2',
        'train_dataloader.drop_last=True',
        'val_dataloader.batch_size=2',
        'test_dataloader.batch_size=2',
        f'train_cfg.max_epochs={max_epochs}',
        'default_hooks.logger.interval=1',
        f'randomness.seed={seed}',
        'randomness.deterministic=True',
        # The shapes configs start every anchor as background with
        # probability 0.99 (each class 0.002, below the 0.02 score
        # threshold); a run of a few iterations would predict no box, and
        # CocoMetric reports no mAP at all then.
        'model.test_cfg.score_thr=0.0',
    ]
    for loader in ('train', 'val', 'test'):
        options += [
            f'{loader}_dataloader.num_workers=0',
            f'{loader}_dataloader.persistent_workers=False'
        ]
    return options


def tool_env():
    """Environment for tool subprocesses: the repo importable, the venv's
    ``torchrun`` on PATH, no display, one thread a process (torch's default
    of one thread a core is several times slower on a busy 2-core machine).
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p])
    env['PATH'] = os.pathsep.join(
        [str(Path(sys.executable).parent), env.get('PATH', '')])
    env.pop('DISPLAY', None)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env
