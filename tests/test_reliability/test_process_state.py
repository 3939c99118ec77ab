"""Loading a checkpoint, or importing dn_mmdet, changes nothing in the
process beyond what it is for (the loaded object; the registrations)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

from dn_mmdet.engine.hooks import SafeCheckpointLoaderHook
from dn_mmdet.utils import compat


@pytest.fixture
def crafted_checkpoint(tmp_path, monkeypatch):
    """A checkpoint of allow-listed globals only whose log buffer carries a
    statistics table mapping 'max' to HistoryBuffer.min."""
    with monkeypatch.context() as patch:
        patch.setitem(
            HistoryBuffer._statistics_methods, 'max', HistoryBuffer.min
        )
        buffer = HistoryBuffer([1, 2, 3], [1, 1, 1])
        path = tmp_path / 'crafted.pth'
        torch.save(dict(message_hub=dict(log_scalars=dict(loss=buffer))), path)
    assert HistoryBuffer([1, 2, 3], [1, 1, 1]).statistics('max') == 3
    # Only allow-listed globals: the weights-only loader accepts the file.
    referenced = torch.serialization.get_unsafe_globals_in_checkpoint(
        str(path)
    )
    assert 'builtins.getattr' in referenced
    assert set(referenced) <= set(compat.safe_global_names())
    return path


def test_loading_a_checkpoint_keeps_the_statistics_methods(crafted_checkpoint):
    loaded = compat.load_from_local(str(crafted_checkpoint))
    buffer = loaded['message_hub']['log_scalars']['loss']
    assert isinstance(buffer, HistoryBuffer)
    assert HistoryBuffer([1, 2, 3], [1, 1, 1]).statistics('max') == 3
    assert buffer.statistics('max') == 3  # the process's methods
    assert HistoryBuffer._statistics_methods['max'] is HistoryBuffer.max
    # The same through mmengine's loader (load_from, resume, test).
    with compat.safe_checkpoint_loading():
        _load_checkpoint(str(crafted_checkpoint), map_location='cpu')
    assert HistoryBuffer([1, 2, 3], [1, 1, 1]).statistics('max') == 3


def test_buffers_loaded_before_any_is_made_have_the_statistics(
    crafted_checkpoint, monkeypatch
):
    """A resumed process whose first log buffers come from the checkpoint
    (a checkpoint written after validation holds every key the run logs)
    computes their statistics as with mmengine's own loader."""
    monkeypatch.setattr(HistoryBuffer, '_statistics_methods', {})
    loaded = compat.load_from_local(str(crafted_checkpoint))
    buffer = loaded['message_hub']['log_scalars']['loss']
    assert buffer.statistics('mean') == 2
    assert buffer.statistics('max') == 3
    assert HistoryBuffer._statistics_methods == {
        name: getattr(HistoryBuffer, name)
        for name in ('min', 'max', 'current', 'mean')
    }


def test_allow_list_holds_only_while_loading(crafted_checkpoint):
    before = set(torch.serialization.get_safe_globals())
    compat.load_from_local(str(crafted_checkpoint))
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(Exception, match='HistoryBuffer'):
        torch.load(crafted_checkpoint)  # torch's default is untouched
    # A global the user allowed for the process stays allowed.
    with torch.serialization.safe_globals([HistoryBuffer]):
        compat.load_from_local(str(crafted_checkpoint))
        assert HistoryBuffer in torch.serialization.get_safe_globals()


def test_safe_checkpoint_loading_puts_the_previous_loader_back():
    previous = CheckpointLoader._schemes['']
    assert previous is not compat.load_from_local
    with compat.safe_checkpoint_loading():
        assert CheckpointLoader._schemes[''] is compat.load_from_local
        with compat.safe_checkpoint_loading():  # nested
            pass
        assert CheckpointLoader._schemes[''] is compat.load_from_local
    assert CheckpointLoader._schemes[''] is previous
    hook = SafeCheckpointLoaderHook()
    hook.before_run(runner=None)
    assert CheckpointLoader._schemes[''] is compat.load_from_local
    hook.after_run(runner=None)
    assert CheckpointLoader._schemes[''] is previous
    # Loading is over when a loop starts: the loader goes back then.
    for loop_start in ('before_train', 'before_val', 'before_test'):
        hook.before_run(runner=None)
        assert CheckpointLoader._schemes[''] is compat.load_from_local
        getattr(hook, loop_start)(runner=None)
        assert CheckpointLoader._schemes[''] is previous
        hook.after_run(runner=None)
        assert CheckpointLoader._schemes[''] is previous


def test_a_run_stopped_while_loading_puts_nothing_back_later():
    # A run whose load raised never reaches the hook's put-back; the tool's
    # block restores the table, and collecting the abandoned hook later
    # must not write its stale "previous" loader back.
    import gc

    previous = CheckpointLoader._schemes['']
    with compat.safe_checkpoint_loading():
        hook = SafeCheckpointLoaderHook()
        hook.before_run(runner=None)
    assert CheckpointLoader._schemes[''] is previous
    del hook
    gc.collect()
    assert CheckpointLoader._schemes[''] is previous


_IMPORT_STATE = """
import json, sys, torch
import torch.nn.modules.module as module_globals
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

def hook_registries():
    return {k: len(v) for k, v in vars(module_globals).items()
            if k.startswith('_global_') and isinstance(v, dict)}

def state():
    return dict(
        schemes={k: f'{v.__module__}.{v.__qualname__}'
                 for k, v in CheckpointLoader._schemes.items()},
        statistics=sorted(HistoryBuffer._statistics_methods),
        default_load=repr(torch.load.__defaults__))

def entry_module(entry):
    entry = entry[0] if isinstance(entry, tuple) else entry
    return entry.__module__

allowed_before = set(torch.serialization.get_safe_globals())
before, hooks_before = state(), hook_registries()
import dn_mmdet
after = state()
# A DN model's forward and backward (train and eval) install no hooks either.
from mmcv.cnn import ConvModule
model = ConvModule(3, 8, 3, norm_cfg=dict(type='DN'),
                   act_cfg=dict(type='ReLU6'))
model(torch.randn(2, 3, 8, 8)).sum().backward()
with torch.no_grad():
    model.eval()(torch.randn(2, 3, 8, 8))
hooks_after = hook_registries()
# torch's own modules (dynamo, DTensor) allow their types when mmdet imports
# them; anything else would come from dn_mmdet.
allowed = sorted(entry_module(e) for e in
                 set(torch.serialization.get_safe_globals()) - allowed_before)
# Modules without a file of their own: stand-ins put into sys.modules.
stand_ins = sorted(
    name for name, module in sys.modules.items()
    if name.split('.')[0] in ('torchvision', 'mmcv', 'mmdet', 'mmpretrain',
                              'mmengine', 'dn_mmdet')
    and not getattr(module, '__file__', None))
print(json.dumps(dict(before=before, after=after, stand_ins=stand_ins,
                      allowed=allowed, hooks_before=hooks_before,
                      hooks_after=hooks_after)))
"""


@pytest.mark.slow
def test_importing_dn_mmdet_only_registers():
    """In a fresh process: mmengine's checkpoint loaders and HistoryBuffer's
    table are as before ``import dn_mmdet``, torch's allow-list gains no
    global of dn_mmdet's (before: the whole SAFE_GLOBALS, and the loader
    replaced), and no stand-in module is put in sys.modules; torch's
    process-wide module hooks are as before the import and a DN model's
    forward and backward, in train and eval (the import once added three
    registration hooks and the first forward a pre-hook)."""
    proc = subprocess.run(
        [sys.executable, '-c', _IMPORT_STATE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.splitlines()[-1])
    assert record['after'] == record['before']
    assert all(m.startswith('torch.') for m in record['allowed']), record[
        'allowed'
    ]
    assert (
        record['before']['schemes']['']
        == 'mmengine.runner.checkpoint.load_from_local'
    )
    assert record['stand_ins'] == []
    assert record['hooks_after'] == record['hooks_before']
    assert '_global_forward_pre_hooks' in record['hooks_before']
    assert len(record['hooks_before']) >= 6
