"""mmengine checkpoints load under torch's weights-only unpickler; a checkpoint
carrying code is refused without running it; an empty or truncated one is
named with what to do, wherever it is read."""

import os
import os.path as osp
import pickle
import re
from pathlib import Path

import pytest
import torch
from helpers import REPO
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from dn_mmdet.utils import compat


@pytest.fixture(scope='module')
def runner_checkpoints(tmp_path_factory, toy):
    """Checkpoints written by a real mmengine runner (2 epochs, save_best)."""
    work_dir = tmp_path_factory.mktemp('runner')
    toy.build_runner(work_dir, validate=True).train()
    paths = sorted(work_dir.glob('*.pth'))
    assert {p.name for p in paths} >= {'epoch_1.pth', 'epoch_2.pth'}
    assert any(p.name.startswith('best_xent') for p in paths)
    return paths


def test_runner_checkpoints_need_exactly_the_allow_list(runner_checkpoints):
    """The allow-list covers every global of a runner checkpoint and the
    checkpoints do reference them (so the list is not larger than needed in
    kind: HistoryBuffer, its methods and numpy values)."""
    with torch.serialization.safe_globals(list(compat.SAFE_GLOBALS)):
        for path in runner_checkpoints:
            assert (
                torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                == []
            )
    # Without the allow-list (nothing is allowed process-wide), torch
    # reports exactly the globals we add.
    needed = set(
        torch.serialization.get_unsafe_globals_in_checkpoint(
            str(runner_checkpoints[0])
        )
    )
    assert needed >= {
        'mmengine.logging.history_buffer.HistoryBuffer',
        'builtins.getattr',
        'numpy.ndarray',
        'numpy.dtype',
        'numpy._core.multiarray._reconstruct',
        'numpy._core.multiarray.scalar',
    }
    assert needed <= set(compat.safe_global_names())


def test_runner_checkpoint_loads_weights_only(runner_checkpoints):
    path = [p for p in runner_checkpoints if p.name == 'epoch_2.pth'][0]
    ckpt = compat.load_from_local(str(path))  # torch.load, weights-only
    assert ckpt['meta']['epoch'] == 2
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert loss.mean() == pytest.approx(float(loss.data[0].mean()))
    assert set(ckpt) >= {'state_dict', 'optimizer', 'param_schedulers'}
    # The same through mmengine's loader (what load_from/resume use).
    with compat.safe_checkpoint_loading():
        via_mmengine = _load_checkpoint(str(path), map_location='cpu')
    for key, value in ckpt['state_dict'].items():
        assert torch.equal(via_mmengine['state_dict'][key], value)


def test_resume_and_load_from_use_weights_only(
    runner_checkpoints, tmp_path, toy
):
    """Runner.resume and load_from go through the weights-only loader,
    which the runtime's SafeCheckpointLoaderHook switches on (the toy
    runner has it as the project's configs do)."""
    work_dir = runner_checkpoints[0].parent
    runner = toy.build_runner(
        tmp_path / 'resumed',
        max_epochs=3,
        resume=True,
        load_from=str(work_dir / 'epoch_2.pth'),
    )
    runner.train()
    assert runner.epoch == 3
    runner = toy.build_runner(
        tmp_path / 'loaded',
        max_epochs=1,
        load_from=str(tmp_path / 'resumed' / 'epoch_3.pth'),
    )
    runner.train()


def _broken_checkpoints(good: Path, folder: Path) -> dict:
    """An empty file, a zip cut in the middle, one missing its last bytes,
    and a text file, each with the words its error should contain."""
    data = good.read_bytes()
    cases = dict(
        empty=(b'', 'the file is empty (0 bytes)'),
        half=(
            data[: len(data) // 2],
            'truncated or corrupt (an incomplete zip archive)',
        ),
        tail=(data[:-100], 'truncated or corrupt'),
        text=(b'not a checkpoint\n', 'is not a PyTorch checkpoint'),
    )
    paths = {}
    for name, (content, words) in cases.items():
        path = folder / f'{name}.pth'
        path.write_bytes(content)
        paths[name] = (path, words)
    return paths


def test_broken_checkpoint_is_named(runner_checkpoints, tmp_path):
    for path, words in _broken_checkpoints(
        runner_checkpoints[0], tmp_path
    ).values():
        # Control: torch names no file (EOFError, "PytorchStreamReader
        # failed reading zip archive", ...).
        with pytest.raises(Exception) as raw:
            torch.load(path)
        assert str(path) not in str(raw.value)
        with pytest.raises(
            compat.CheckpointReadError
        ) as err, compat.safe_checkpoint_loading():
            _load_checkpoint(str(path), map_location='cpu')  # mmengine's
        msg = str(err.value)
        assert msg.startswith(f'Cannot read checkpoint {path}: ')
        assert words in msg and 'copy or download it again' in msg


def test_broken_checkpoint_names_its_siblings(runner_checkpoints, tmp_path):
    work_dir = runner_checkpoints[0].parent
    broken = work_dir / 'epoch_3.pth'
    broken.write_bytes(b'')
    try:
        with pytest.raises(
            compat.CheckpointReadError,
            match='newest first: epoch_2.pth, .*epoch_1.pth',
        ), compat.safe_checkpoint_loading():
            _load_checkpoint(str(broken))
    finally:
        broken.unlink()


def test_broken_load_from_and_resume_are_named(
    runner_checkpoints, tmp_path, toy
):
    paths = _broken_checkpoints(runner_checkpoints[0], tmp_path)
    for kwargs in (
        dict(load_from=str(paths['half'][0])),
        dict(load_from=str(paths['empty'][0]), resume=True),
    ):
        runner = toy.build_runner(tmp_path / 'work', **kwargs)
        with pytest.raises(compat.CheckpointReadError) as err:
            runner.train()
        assert f'Cannot read checkpoint {kwargs["load_from"]}' in str(
            err.value
        )


def test_broken_pretrained_init_is_named(tmp_path):
    from dn_mmdet.models.backbones.mobilenet_v2_dn import MobileNetV2DN

    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    backbone = MobileNetV2DN(
        init_cfg=dict(type='Pretrained', checkpoint=str(empty))
    )
    with pytest.raises(
        compat.CheckpointReadError,
        match=f'Cannot read checkpoint {empty}: the file is '
        r'empty \(0 bytes\) \(EOFError\)',
    ):
        backbone.init_weights()


def test_sound_file_keeps_torch_error(tmp_path):
    """An intact file that fails to load for another reason (here a
    map_location that fails) is not called truncated."""
    path = tmp_path / 'ok.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(1))), path)

    def unmappable(storage, location):
        raise RuntimeError(f'cannot map to {location}')

    with pytest.raises(RuntimeError, match='cannot map to cpu') as err:
        compat.load_from_local(str(path), map_location=unmappable)
    assert not isinstance(err.value, compat.CheckpointReadError)


class _RunsShell:
    """Pickles as ``os.system(<command>)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _RunsEval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


class _GetsAttr:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: the allowed name
    ``builtins.getattr`` used for something else."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


@pytest.mark.parametrize(
    'payload,refused',
    [
        (lambda marker: _RunsShell(f'touch {marker}'), 'posix.system'),
        (
            lambda marker: _RunsEval(f'open({str(marker)!r}, "w")'),
            'builtins.eval',
        ),
        (lambda marker: _GetsAttr(), 'getattr'),
    ],
)
def test_pickled_callable_is_refused(tmp_path, payload, refused):
    marker = tmp_path / 'side_effect'
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={}, meta=dict(x=payload(marker))), path)
    with pytest.raises(
        pickle.UnpicklingError
    ) as info, compat.safe_checkpoint_loading():
        _load_checkpoint(str(path), map_location='cpu')
    message = str(info.value)
    assert str(path) in message and refused in message
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_allow_list_is_small_and_has_no_code_runners():
    names = compat.safe_global_names()
    assert len(names) <= 24
    for name in names:
        assert not name.startswith(('os.', 'posix.', 'subprocess.', 'sys.'))
    assert 'builtins.eval' not in names and 'builtins.exec' not in names
    # 'builtins.getattr' is bound to the restricted stand-in, not getattr.
    bound = {
        entry[1]: entry[0]
        for entry in compat.SAFE_GLOBALS
        if isinstance(entry, tuple)
    }
    assert bound['builtins.getattr'] is not getattr
    assert (
        bound['builtins.getattr'](HistoryBuffer, 'mean') is HistoryBuffer.mean
    )
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        bound['builtins.getattr'](HistoryBuffer, '__init__')
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        bound['builtins.getattr'](os, 'system')


def test_numpy1_module_names_load(tmp_path):
    """numpy 1.x pickles arrays via ``numpy.core.multiarray``; such files
    load too (the names are aliases of the same two functions)."""
    import numpy as np

    path = tmp_path / 'np1.pth'
    torch.save(dict(meta=dict(v=np.arange(3.0), s=np.float64(2.5))), path)
    # Rewrite the pickle's module names as numpy 1.x writes them.
    import zipfile

    with zipfile.ZipFile(path) as src:
        records = {name: src.read(name) for name in src.namelist()}
    pkl = [name for name in records if name.endswith('data.pkl')][0]
    assert b'numpy._core.multiarray' in records[pkl]
    records[pkl] = records[pkl].replace(
        b'numpy._core.multiarray', b'numpy.core.multiarray'
    )
    with zipfile.ZipFile(path, 'w') as dst:
        for name, data in records.items():
            dst.writestr(name, data)
    meta = compat.load_from_local(str(path))['meta']
    assert np.array_equal(meta['v'], np.arange(3.0)) and meta['s'] == 2.5


# Built from parts so that this file does not match its own search.
_DISABLING_PATTERNS = [
    re.compile(r'weights_only\s*=\s*' + 'False'),
    re.compile('TORCH_FORCE_NO_' + 'WEIGHTS_ONLY_LOAD'),
    re.compile(r'pickle_module\s*=\s*pickle\b'),
]


def test_nothing_disables_weights_only_loading():
    """torch's default (weights-only) is in force: the environment does not
    override it and no code or script of the project turns it off (docs may
    name the variable)."""
    assert ('TORCH_FORCE_NO_' + 'WEIGHTS_ONLY_LOAD') not in os.environ
    offenders = []
    skip = {'.git', '.venv', 'work_dirs', 'data', '__pycache__', 'build'}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith('.')]
        for name in files:
            if not name.endswith(
                ('.py', '.sh', '.cfg', '.toml', '.ini', '.yml', '.yaml')
            ):
                continue
            path = osp.join(root, name)
            with open(path, errors='replace') as f:
                text = f.read()
            offenders += [
                f'{path}: {p.pattern}'
                for p in _DISABLING_PATTERNS
                if p.search(text)
            ]
    assert offenders == []


def test_only_numeric_numpy_values_are_allowed(tmp_path):
    import numpy as np

    allowed = [
        np.arange(3, dtype=np.int32),
        np.float32(1.5),
        np.bool_(True),
        np.zeros((2, 2), dtype=np.float16),
    ]
    for i, value in enumerate(allowed):
        torch.save(dict(v=value), tmp_path / f'ok{i}.pth')
        loaded = compat.load_from_local(str(tmp_path / f'ok{i}.pth'))['v']
        assert np.array_equal(loaded, value) and loaded.dtype == value.dtype
    for i, value in enumerate(
        [np.array(['a', 1], dtype=object), np.array(['text'])]
    ):
        torch.save(dict(v=value), tmp_path / f'no{i}.pth')
        with pytest.raises(pickle.UnpicklingError):
            compat.load_from_local(str(tmp_path / f'no{i}.pth'))
