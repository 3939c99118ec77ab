"""tools/dist_train.sh and tools/dist_test.sh from a plain shell (the
project's environment not activated): two processes train the DN-B shapes
config on CPU with gloo, then evaluate its checkpoint."""

import contextlib
import re
import subprocess

import pytest
import torch
from helpers import REPO, free_port, run_python, subprocess_env

from dn_mmdet.utils import load_from_local

# No virtual environment on PATH: the scripts must find the project's python
# themselves (DN_MMDET_VENV, set by tool_env as a user would).
PLAIN_PATH = '/usr/local/bin:/usr/bin:/bin'


def _run(script, args, env, cwd):
    proc = subprocess.run(
        ['bash', str(REPO / 'tools' / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env, PORT=str(free_port())),
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
@pytest.mark.slow
def test_dist_train_and_test_from_a_plain_shell(
    shapes_data, shapes_config, shapes_options, tool_env, tmp_path
):
    env = dict(tool_env, PATH=PLAIN_PATH)
    options = shapes_options(shapes_data, max_epochs=1)
    work_dir = tmp_path / 'dist'
    code, log = _run(
        'dist_train.sh',
        [
            shapes_config('dn'),
            '2',
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *options,
        ],
        env,
        tmp_path,
    )
    assert code == 0, log[-4000:]
    assert 'command not found' not in log
    assert "using the 'gloo' backend" in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    # 8 images, 2 a batch on each of 2 processes: 2 iterations.
    assert 'Epoch(train) [1][2/2]' in log
    # Validation gathered the predictions of both ranks.
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\].*coco/bbox_mAP', log)
    checkpoint = work_dir / 'epoch_1.pth'
    state = load_from_local(checkpoint)['state_dict']
    assert all(
        torch.isfinite(v).all()
        for v in state.values()
        if v.is_floating_point()
    )

    code, log = _run(
        'dist_test.sh',
        [
            shapes_config('dn'),
            str(checkpoint),
            '2',
            '--work-dir',
            str(tmp_path / 'test'),
            '--cfg-options',
            *options,
        ],
        env,
        tmp_path,
    )
    assert code == 0, log[-4000:]
    assert re.search(r'^bbox mAP: \d\.\d{4}$', log, re.M), log[-3000:]


@pytest.mark.parametrize('raises', [False, True])
def test_the_tools_destroy_their_process_group(raises):
    # A gloo group alive at interpreter exit can abort a finished rank
    # (SIGABRT, 'terminate called without an active exception': 5 of 15
    # two-rank runs here), which fails the whole torchrun job; tools/train.py
    # and tools/test.py run inside this context for that reason.
    import torch.distributed as dist

    from dn_mmdet.utils.distributed import destroy_process_group_on_exit

    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with destroy_process_group_on_exit():
            dist.init_process_group(
                'gloo',
                init_method=f'tcp://127.0.0.1:{free_port()}',
                rank=0,
                world_size=1,
            )
            assert dist.is_initialized()
            if raises:
                raise RuntimeError('the run failed')
    assert not dist.is_initialized()
    with destroy_process_group_on_exit():  # no group: nothing to do
        pass
    for tool in ('train.py', 'test.py'):
        source = (REPO / 'tools' / tool).read_text()
        assert 'with destroy_process_group_on_exit():' in source, tool
        assert source.endswith('    main()\n    exit_finished_rank()\n')


# A rank's last words, then an exit handler that would run in the
# interpreter's teardown.
_RANK = (
    'import atexit, logging\n'
    'from dn_mmdet.utils.distributed import exit_finished_rank\n'
    'atexit.register(print, "teardown ran")\n'
    'logging.basicConfig(filename="rank.log", level=logging.INFO)\n'
    'logging.info("logged")\n'
    'print("work done")\n'
    'exit_finished_rank()\n'
    'print("not reached")\n'
)


@pytest.mark.slow
def test_a_finished_rank_exits_without_the_teardown(tmp_path):
    # Even with its group destroyed, a gloo rank aborted in the teardown
    # once under load (tests/test_norm/test_dynamic_norm_edges.py's run),
    # so the tools end a finished rank before it.
    env = dict(subprocess_env(), WORLD_SIZE='2')
    proc = run_python(['-c', _RANK], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'work done\n'  # flushed; no teardown
    assert 'logged' in (tmp_path / 'rank.log').read_text()  # flushed


@pytest.mark.parametrize('world_size', ['1', None])
def test_a_process_that_is_no_rank_goes_on(world_size, monkeypatch):
    from dn_mmdet.utils.distributed import exit_finished_rank

    monkeypatch.delenv('WORLD_SIZE', raising=False)
    if world_size is not None:
        monkeypatch.setenv('WORLD_SIZE', world_size)
    assert exit_finished_rank() is None  # returned: the process lives on
