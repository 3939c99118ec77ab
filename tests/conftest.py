"""Fixtures shared by the whole suite: the tools, the toy runner, and the
embedded shapes data with the one way to shrink a shapes config."""

# dn_mmdet first: it makes the registries' CUDA build of torchvision importable
# beside CPU torch (dn_mmdet/utils/torchvision_compat.py), which
# ``import mmdet.models`` needs now that mmpretrain is installed.
import dn_mmdet  # noqa: F401, I001
import collections
import uuid

import pytest
import torch
from helpers import (
    SHAPES_CONFIGS,
    TOOLS,
    cfg_options_dict,
    load_module,
    subprocess_env,
)


def pytest_configure(config):
    config.addinivalue_line(
        'markers',
        'slow: takes seconds (a real process, a training or a compile); '
        "-m 'not slow' leaves them out",
    )


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first, those with the most slow test
    functions first; the order within a module kept.

    The workers take a module at a time in this order
    (``--dist loadscope --no-loadscope-reorder``, as tools/run_tests.sh runs
    them): with the long modules dealt out first, the many short ones even
    out the two workers' ends, where a long module dealt out last kept one
    worker busy after the other had finished.
    """
    slow = collections.defaultdict(set)  # a parametrized test counts once
    for item in items:
        if item.get_closest_marker('slow') is not None:
            slow[item.path].add(item.originalname)
    items.sort(key=lambda item: -len(slow[item.path]))


def _load_tool(path: str):
    """``tools/<path>.py`` as a module, for tests of a command line itself
    (its arguments, usage errors and exit messages); what a tool calls is
    tested through the package.

    Registered in ``sys.modules`` (as ``tools_<stem>``) so that what it
    defines pickles.
    """
    return load_module(TOOLS / f'{path}.py', f'tools_{path.split("/")[-1]}')


@pytest.fixture(autouse=True)
def checkpoint_loaders_unchanged():
    """Each test leaves mmengine's checkpoint loaders as it found them: the
    project switches its loader on for a block or a run, never for the
    process."""
    from mmengine.runner.checkpoint import CheckpointLoader

    before = dict(CheckpointLoader._schemes)
    yield
    after = dict(CheckpointLoader._schemes)
    assert after == before, (
        'the test left mmengine checkpoint loaders changed: '
        f'{ {k: v for k, v in after.items() if before.get(k) is not v} }'
    )


@pytest.fixture(scope='session', autouse=True)
def torch_threads():
    """One torch thread in this process, as in the tools' subprocesses
    (``tool_env``): the tests' tensors are small, and torch's default of a
    thread a core makes the in-process training runs several times slower
    on a busy 2-core machine. Yields torch's default, for the tests that
    run the compiled DN kernel's parallel split
    (tests/test_norm/test_dynamic_norm_inference.py)."""
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    yield default
    torch.set_num_threads(default)


@pytest.fixture(scope='session')
def load_tool():
    """``load_tool('model_converters/bn2dn')``: a tool as a module (for
    tests of its command line)."""
    return _load_tool


@pytest.fixture(scope='session')
def shapes_generator():
    """:mod:`dn_mmdet.datasets.shapes_generator` (the embedded data's
    generator)."""
    from dn_mmdet.datasets import shapes_generator

    return shapes_generator


@pytest.fixture(scope='session')
def train_tool():
    """tools/train.py as a module, for tests of its command line."""
    return _load_tool('train')


@pytest.fixture(scope='session')
def test_tool():
    """tools/test.py as a module, for tests of its command line."""
    return _load_tool('test')


@pytest.fixture(scope='session')
def toy():
    """The toy runner module (tests/toy_runner.py): ``build_runner``,
    ``ToyNet``, ``InjectFault``, ..."""
    import toy_runner

    return toy_runner


@pytest.fixture(scope='session')
def shapes_data(tmp_path_factory, shapes_generator) -> str:
    """8 training and 4 validation images of the shapes data (64-96 px),
    written once a session; the root of a COCO-format data set."""
    root = str(tmp_path_factory.mktemp('shapes'))
    shapes_generator.generate_shapes_dataset(
        root, num_train=8, num_val=4, img_size=(64, 96)
    )
    return root


@pytest.fixture(scope='session')
def shapes_config():
    """Path of the BN (``'bn'``), DN-B (``'dn'``), SN (``'sn'``) or MABN
    (``'mabn-cenconv'``) shapes config."""
    return lambda kind: str(SHAPES_CONFIGS[kind])


@pytest.fixture(scope='session')
def shapes_options():
    """``--cfg-options`` that point a shapes config at ``shapes_data`` and
    shrink it to seconds: every image kept, batches of ``batch_size``, no
    worker processes, ``max_epochs``, a log line an iteration; validation
    on the 4 val images (``validate``) with every box evaluated (the
    configs' background prior puts every class below ``score_thr`` at
    first); a fixed seed in deterministic mode if ``seed`` is given; the
    training images resized to ``input_size``."""

    def options(
        data_root,
        max_epochs=2,
        batch_size=2,
        validate=True,
        seed=None,
        input_size=None,
    ):
        root = f'{data_root}/'
        opts = [
            f'experiment_name=test_{uuid.uuid4().hex[:8]}',
            f'train_dataloader.dataset.data_root={root}',
            'train_dataloader.dataset.filter_cfg.filter_empty_gt=False',
            f'train_dataloader.batch_size={batch_size}',
            f'train_cfg.max_epochs={max_epochs}',
            'default_hooks.logger.interval=1',
        ]
        loaders = ['train']
        if validate:
            loaders += ['val', 'test']
            ann = f'{root}annotations/instances_val.json'
            opts += [
                f'val_dataloader.dataset.data_root={root}',
                f'test_dataloader.dataset.data_root={root}',
                f'val_evaluator.ann_file={ann}',
                f'test_evaluator.ann_file={ann}',
                'val_dataloader.batch_size=2',
                'test_dataloader.batch_size=2',
                'model.test_cfg.score_thr=0.0',
            ]
        else:
            opts += [
                f'{key}=None'
                for key in (
                    'val_dataloader',
                    'val_cfg',
                    'val_evaluator',
                    'test_dataloader',
                    'test_cfg',
                    'test_evaluator',
                )
            ] + ['default_hooks.checkpoint.save_best=None']
        for loader in loaders:
            opts += [
                f'{loader}_dataloader.num_workers=0',
                f'{loader}_dataloader.persistent_workers=False',
            ]
        if seed is not None:
            opts += [
                f'randomness.seed={seed}',
                'randomness.deterministic=True',
            ]
        if input_size is not None:  # the Resize of the shapes pipeline
            opts.append(
                'train_dataloader.dataset.pipeline.2.scale='
                f'({input_size},{input_size})'
            )
        return opts

    return options


@pytest.fixture(scope='session')
def shapes_cfg(shapes_options):
    """A shapes config shrunk by ``shapes_options`` (no validation by
    default), built as ``tools/train.py`` builds it (by
    :func:`dn_mmdet.utils.run_config.build_train_cfg`; ``flags`` may be
    ``'--amp'``); for in-process runs."""
    from dn_mmdet.utils.run_config import build_train_cfg

    def build(kind, data_root, work_dir, *flags, **kwargs):
        assert set(flags) <= {'--amp'}, flags
        kwargs.setdefault('validate', False)
        return build_train_cfg(
            str(SHAPES_CONFIGS[kind]),
            cfg_options=cfg_options_dict(shapes_options(data_root, **kwargs)),
            work_dir=str(work_dir),
            amp='--amp' in flags,
        )

    return build


@pytest.fixture(scope='session')
def tool_env():
    """Environment of tool subprocesses: the repo importable, the project's
    python found without activating it, no display, one thread a process
    (torch's default of one a core is several times slower on a busy 2-core
    machine)."""
    return subprocess_env()


@pytest.fixture(scope='session')
def get_flops():
    """:mod:`dn_mmdet.analysis.complexity`, what the project's size tool
    (tools/analysis/get_flops.py) counts with."""
    from dn_mmdet.analysis import complexity

    return complexity
