"""tools/analysis/norm_study.py and dn_mmdet.analysis.study: a study of real
training runs (tiny shapes data, two epochs of a few iterations), killed
mid-grid and resumed, its results, table and plots; the spec checks (the
report's arithmetic on known records: tests/test_analysis/
test_study_report.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port
from mmengine.config import Config, DictAction

from dn_mmdet.analysis.study.supervise import live_processes
from dn_mmdet.utils import load_from_local

CONFIG = REPO / 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
NORMS_BASE = REPO / 'configs/studies/_base_/norms.py'
DN_NORM_CFG = dict(type='DN', r=16, g='oup', eps=1e-3)


@pytest.fixture(scope='module')
def norm_study():
    """The study library (spec, options, records, runner)."""
    from dn_mmdet.analysis import study

    return study


@pytest.fixture(scope='module')
def study_cli(load_tool):
    """tools/analysis/norm_study.py (the command line)."""
    return load_tool('analysis/norm_study')


@pytest.fixture(scope='module')
def tiny(shapes_options, shapes_data):
    """``--cfg-options`` of a shapes run of seconds: 2 epochs, seed 0."""
    return shapes_options(shapes_data, max_epochs=2, seed=0)


def write_spec(path: Path, options, **keys) -> Path:
    """A spec over the shapes config shrunk by ``options`` (``tiny``)."""
    cfg_options = {
        key: DictAction._parse_iterable(value)
        for key, value in (item.split('=', 1) for item in options)
    }
    cfg_options.update(
        {
            # Three iterations an epoch, a validation after each.
            'train_dataloader.dataset.indices': 6,
            'train_cfg.val_interval': 1,
        }
    )
    spec = dict(
        base_config=str(CONFIG),
        metric='coco/bbox_mAP',
        metric_scale=100,
        metric_label='bbox mAP (%)',
        norms=['bn', 'dnb-r16-goup'],
        batch_sizes=[2],
        lr_mults=[1],
        seeds=[0],
        cfg_options=cfg_options,
    )
    spec.update(keys)
    lines = [f"_base_ = ['{NORMS_BASE}']"]
    lines += [f'{key} = {value!r}' for key, value in spec.items()]
    path.write_text('\n'.join(lines) + '\n')
    return path


def _study_cmd(spec, out):
    return [
        sys.executable,
        str(REPO / 'tools/analysis/norm_study.py'),
        str(spec),
        '--work-dir',
        str(out),
        '--progress-interval',
        '1',
    ]


def _processes_writing(path) -> list:
    """Pids of live processes whose command line mentions ``path``."""
    pids = []
    for proc in Path('/proc').iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / 'cmdline').read_bytes().replace(b'\0', b' ')
            state = (proc / 'stat').read_text().split()[2]
        except OSError:
            continue
        if str(path).encode() in cmdline and state != 'Z':
            pids.append(int(proc.name))
    return pids


# A hook the killed study's runs import: the DN run's first segment stops
# at the start of its second epoch, says so, and waits to be killed (a run
# of a few tenths of a second an epoch outran the kill: it had saved its
# second epoch's checkpoint by the time the signal came).
STALL_HOOK = """
import time
from pathlib import Path
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class StallOnceHook(Hook):
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        marker = Path(__file__).with_name('stall_once')
        first_dn_segment = 'dnb' in runner.work_dir and marker.exists()
        if runner.epoch == 1 and batch_idx == 0 and first_dn_segment:
            marker.unlink()
            print('stalled at epoch 2', flush=True)
            time.sleep(600)
"""


@pytest.fixture(scope='module')
def study(tiny, tool_env, tmp_path_factory):
    """A 2-run study (BN, DN-B), killed (SIGKILL) while the second run
    trains its second epoch, then run again to the end."""
    tmp = tmp_path_factory.mktemp('norm_study')
    (tmp / 'stall_once_hook.py').write_text(STALL_HOOK)
    config = tmp / 'stall_once_config.py'
    config.write_text(
        f"_base_ = '{CONFIG}'\n"
        "custom_imports = dict(imports=['dn_mmdet', 'stall_once_hook'])\n"
        "custom_hooks = [dict(type='StallOnceHook')]\n"
    )
    spec = write_spec(tmp / 'spec.py', tiny, base_config=str(config))
    tool_env = dict(
        tool_env, PYTHONPATH=f'{tmp}{os.pathsep}{tool_env["PYTHONPATH"]}'
    )
    out = tmp / 'study'
    runs = out / 'runs'
    bn_dir, dn_dir = (
        runs / 'bn_bs2_lr1x_seed0',
        runs / 'dnb-r16-goup_bs2_lr1x_seed0',
    )
    (tmp / 'stall_once').touch()
    first = subprocess.Popen(
        _study_cmd(spec, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp,
        env=tool_env,
    )
    deadline = time.time() + 300
    log = dn_dir / 'train.log'
    while not (log.is_file() and 'stalled at epoch 2' in log.read_text()):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, 'the second run did not reach epoch 2'
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first_output = first.communicate()[0]
    killed_at = sorted(p.name for p in dn_dir.glob('epoch_*.pth'))[-1]
    # The training process dies with the study (no orphan keeps writing).
    deadline = time.time() + 10
    while _processes_writing(dn_dir) and time.time() < deadline:
        time.sleep(0.1)
    orphans = _processes_writing(dn_dir)
    bn_state_before = json.loads((bn_dir / 'norm_study_run.json').read_text())

    second = subprocess.run(
        _study_cmd(spec, out),
        capture_output=True,
        text=True,
        cwd=tmp,
        env=tool_env,
    )
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    return dict(
        out=out,
        bn_dir=bn_dir,
        dn_dir=dn_dir,
        first_output=first_output,
        second_output=second.stdout,
        killed_at=killed_at,
        orphans=orphans,
        bn_state_before=bn_state_before,
    )


@pytest.mark.slow
def test_killed_study_resumes_without_redoing_runs(study):
    assert study['orphans'] == []
    assert 'run 1/2: bn_bs2_lr1x_seed0 finished' in study['first_output']
    out = study['second_output']
    # The finished run is not redone: the second invocation starts at run 2
    # and the BN run's state and log are those of its only segment.
    assert '1 done already' in out
    assert 'run 1/2' not in out
    bn_state = json.loads(
        (study['bn_dir'] / 'norm_study_run.json').read_text()
    )
    assert bn_state == study['bn_state_before']
    assert len(bn_state['segments']) == 1
    assert (study['bn_dir'] / 'train.log').read_text().count(
        '== norm_study: segment'
    ) == 1
    # The interrupted run continues from its last checkpoint.
    assert 'run 2/2: dnb-r16-goup_bs2_lr1x_seed0' in out
    assert 'resuming from its last checkpoint' in out
    dn_state = json.loads(
        (study['dn_dir'] / 'norm_study_run.json').read_text()
    )
    assert len(dn_state['segments']) == 2
    assert all(
        end is not None and end >= start for start, end in dn_state['segments']
    )
    assert dn_state['command'][-1] == '--resume'
    epoch = int(study['killed_at'][len('epoch_') : -len('.pth')])
    log = (study['dn_dir'] / 'train.log').read_text()
    assert f'resumed epoch: {epoch}' in log
    assert '2/2 runs done (0 diverged/collapsed, 0 failed)' in out
    assert 'ETA' in study['first_output'] + out


def _scalars(run_dir: Path, metric: str) -> dict:
    """{epoch: value} read straight from the run's scalars.json files."""
    values = {}
    for path in sorted(run_dir.glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if metric in record:
                values[record['step']] = record[metric]
    return values


@pytest.mark.slow
def test_results_record_each_run(study):
    results = json.loads((study['out'] / 'results.json').read_text())
    assert results['study']['norms'] == {
        'bn': 'BN',
        'dnb-r16-goup': 'DN-B (16, oup)',
    }
    runs = {r['norm']: r for r in results['runs']}
    assert set(runs) == {'bn', 'dnb-r16-goup'}
    base_lr = Config.fromfile(str(CONFIG)).optim_wrapper.optimizer.lr
    for norm, run_dir in (
        ('bn', study['bn_dir']),
        ('dnb-r16-goup', study['dn_dir']),
    ):
        record = runs[norm]
        curve = _scalars(run_dir, 'coco/bbox_mAP')
        assert sorted(curve) == [1, 2]
        assert record['status'] == 'finished'
        assert record['final'] == curve[2]
        assert record['best'] == max(curve.values())
        assert record['curve'] == {str(k): v for k, v in curve.items()}
        assert record['wall_s'] > 0
        assert record['lr'] == pytest.approx(base_lr)
        # Only the last checkpoint is kept, without optimizer state.
        kept = sorted(p.name for p in run_dir.glob('*.pth'))
        assert kept == ['epoch_2.pth']

        assert set(load_from_local(run_dir / 'epoch_2.pth')) == {
            'meta',
            'state_dict',
        }
    csv_lines = (study['out'] / 'results.csv').read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith('name,norm,')


@pytest.mark.slow
def test_runs_train_the_configured_normaliser(study):
    """The run's config (mmengine dumps it into the work dir) has exactly the
    normaliser's norm_cfg, none of the base's BN keys, and the run's batch,
    lr and seed."""
    dumped = Config.fromfile(
        str(study['dn_dir'] / 'stall_once_config.py'),
        import_custom_modules=False,
    )
    assert dumped.model.backbone.norm_cfg.to_dict() == DN_NORM_CFG
    assert dumped.model.neck.norm_cfg.type == 'BN'  # backbone only
    assert dumped.train_dataloader.batch_size == 2
    assert dumped.randomness.seed == 0
    assert dumped.randomness.deterministic is True


@pytest.mark.slow
def test_table_and_plots(study):
    table = (study['out'] / 'table.md').read_text()
    results = json.loads((study['out'] / 'results.json').read_text())
    for run in results['runs']:
        row = next(
            line
            for line in table.splitlines()
            if line.startswith(f'| {run["norm_label"]} | 2 | 1 |')
        )
        assert f'| {100 * run["final"]:.1f} |' in row
        assert '| 0/1 |' in row
    assert 'batch 2, lr x1' in table
    import matplotlib.image as mpimg

    image = mpimg.imread(study['out'] / 'metric_vs_epoch.png')
    assert image.shape[0] > 100 and image.std() > 0
    # One batch size and one lr: no sweep plots.
    assert not (study['out'] / 'metric_vs_batch.png').exists()


# ---------------------------------------------------------------------- #
# Specs, grids and options (no training)
# ---------------------------------------------------------------------- #
def test_grid_axes_and_full(tmp_path, tiny, norm_study):
    spec = write_spec(
        tmp_path / 'spec.py',
        tiny,
        batch_sizes=[16, 4, 2],
        lr_mults=[1, 2.5],
        seeds=[0, 1],
    )
    axes = norm_study.Study(str(spec))
    assert axes.cells() == [(16, 1), (4, 1), (2, 1), (16, 2.5)]
    runs = axes.runs()
    assert len(runs) == 2 * 4 * 2
    # Seed by seed: the first pass covers every cell once.
    assert {r.seed for r in runs[:8]} == {0}
    assert runs[0].name == 'bn_bs16_lr1x_seed0'
    full = norm_study.Study(str(spec), overrides=dict(grid='full'))
    assert len(full.cells()) == 6


def test_lr_follows_multiplier_and_optionally_batch(
    tmp_path, tiny, norm_study
):
    spec = write_spec(
        tmp_path / 'spec.py', tiny, batch_sizes=[16, 4], lr_mults=[1, 2.5]
    )
    study = norm_study.Study(str(spec))
    base = norm_study.BaseConfig(study)
    run = norm_study.Run('bn', 4, 2.5, 0)
    assert norm_study.run_lr(study, base, run) == pytest.approx(base.lr * 2.5)
    linear = norm_study.Study(str(spec), overrides=dict(lr_scaling='linear'))
    assert norm_study.run_lr(linear, base, run) == pytest.approx(
        base.lr * 2.5 * 4 / 16
    )


def test_options_replace_norm_and_conv_cfg(
    tmp_path, tiny, train_tool, norm_study
):
    spec = write_spec(
        tmp_path / 'spec.py',
        tiny,
        norms=['mine'],
        norm_library=dict(
            mine=dict(
                norm_cfg=dict(type='BN', momentum='{batch_size}'),
                conv_cfg=dict(type='Conv2d'),
            )
        ),
    )
    study = norm_study.Study(str(spec))
    base = norm_study.BaseConfig(study)
    options = norm_study.run_options(
        study, base, norm_study.Run('mine', 2, 1.0, 3)
    )
    keys = list(options)
    delete = keys.index('model.backbone.norm_cfg._delete_')
    assert keys.index('model.backbone.norm_cfg.type') > delete
    # '{batch_size}' becomes the run's batch size.
    assert options['model.backbone.norm_cfg.momentum'] == 2
    assert options['model.backbone.conv_cfg.type'] == 'Conv2d'
    assert options['randomness.seed'] == 3
    # As tools/train.py reads and merges them: BN's eps is gone.
    items = [norm_study.format_option(k, v) for k, v in options.items()]
    cfg = train_tool.build_config(
        train_tool.parse_args([str(CONFIG), '--cfg-options', *items])
    )
    assert cfg.model.backbone.norm_cfg.to_dict() == dict(type='BN', momentum=2)
    assert cfg.model.backbone.conv_cfg.to_dict() == dict(type='Conv2d')


def test_format_option_refuses_values_it_cannot_express(norm_study):
    assert norm_study.format_option('a.b', [1, 'x']) == 'a.b=[1,x]'
    assert norm_study.format_option('a', 1e-3) == 'a=0.001'
    for bad in ('1,2', '12', 'None', dict(x=1)):
        with pytest.raises(norm_study.SpecError, match='a.b'):
            norm_study.format_option('a.b', bad)


@pytest.mark.parametrize(
    'keys, message',
    [
        (dict(norms=['nope']), "norm 'nope' is not in norm_library"),
        (
            dict(norm_keys=['model.nothing.norm_cfg']),
            "norm key 'model.nothing.norm_cfg' is not in",
        ),
        (dict(lr_key='optim_wrapper.lr'), "lr_key 'optim_wrapper.lr'"),
        (dict(grid='diagonal'), 'grid must be one of'),
        (dict(batch_sizes=[]), 'batch_sizes must be a non-empty list'),
        (dict(colour='red'), r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, tiny, keys, message, norm_study):
    spec = write_spec(tmp_path / 'spec.py', tiny, **keys)
    with pytest.raises(norm_study.SpecError, match=message):
        norm_study.BaseConfig(norm_study.Study(str(spec)))


def test_unregistered_norm_fails_before_any_run(tmp_path, tiny, norm_study):
    spec = write_spec(
        tmp_path / 'spec.py',
        tiny,
        norms=['bn', 'future'],
        norm_library=dict(future=dict(norm_cfg=dict(type='NoSuchNorm'))),
    )
    runner = norm_study.StudyRunner(
        norm_study.Study(str(spec)), str(tmp_path / 'out')
    )
    with pytest.raises(
        norm_study.SpecError, match="norm 'future': norm_cfg type 'NoSuchNorm'"
    ):
        runner.run()
    assert not (tmp_path / 'out' / 'runs').exists()


def test_presets_replace_keys_and_update_cfg_options(
    tmp_path, tiny, norm_study
):
    spec = write_spec(
        tmp_path / 'spec.py',
        tiny,
        presets=dict(
            quick=dict(seeds=[7], cfg_options={'train_cfg.max_epochs': 1})
        ),
    )
    quick = norm_study.Study(str(spec), 'quick')
    assert quick.seeds == [7]
    assert quick.cfg_options['train_cfg.max_epochs'] == 1
    # The spec's other options stay.
    assert quick.cfg_options['randomness.deterministic'] is True
    assert quick.name == 'spec_quick'
    with pytest.raises(norm_study.SpecError, match="no preset 'slow'"):
        norm_study.Study(str(spec), 'slow')


def test_shipped_specs_and_presets_load(norm_study):
    """Every spec under configs/studies and each of its presets is valid
    against its base config, with every normaliser registered."""
    specs = sorted((REPO / 'configs/studies').glob('*.py'))
    assert specs
    for spec in specs:
        presets = Config.fromfile(str(spec)).get('presets', {})
        for preset in [None, *presets]:
            study = norm_study.Study(str(spec), preset)
            base = norm_study.BaseConfig(study)
            base.check_registered(study)
            assert study.runs()


def test_outcome_of_a_diverged_and_a_collapsed_run(tmp_path, tiny, norm_study):
    spec = write_spec(tmp_path / 'spec.py', tiny, collapse_below=0.01)
    study = norm_study.Study(str(spec))
    run_dir = tmp_path / 'run'
    (run_dir / '20240101_000000/vis_data').mkdir(parents=True)
    (run_dir / '20240101_000000/vis_data/scalars.json').write_text(
        '{"coco/bbox_mAP": 0.2, "step": 1}\n'
        '{"coco/bbox_mAP": 0.005, "step": 2}\n'
    )
    (run_dir / 'train.log').write_text(
        'Traceback (most recent call last):\n'
        'dn_mmdet.engine.hooks.nonfinite_hook.NonFiniteError: loss is nan '
        'at iteration 7\n'
    )
    diverged = norm_study.run_outcome(study, str(run_dir), 1)
    assert diverged['status'] == 'diverged'
    assert 'loss is nan at iteration 7' in diverged['error']
    assert (diverged['best'], diverged['best_epoch']) == (0.2, 1)
    collapsed = norm_study.run_outcome(study, str(run_dir), 0)
    assert collapsed['status'] == 'collapsed'
    assert collapsed['final'] == 0.005
    (run_dir / '20240101_000000/vis_data/scalars.json').write_text(
        '{"loss": 1.0, "step": 1}\n'
    )
    silent = norm_study.run_outcome(study, str(run_dir), 0)
    assert silent['status'] == 'collapsed'
    assert silent['final'] is None
    assert 'no coco/bbox_mAP was logged' in silent['error']
    (run_dir / 'train.log').write_text('RuntimeError: out of memory\n')
    failed = norm_study.run_outcome(study, str(run_dir), 1)
    assert failed['status'] == 'failed'
    assert 'out of memory' in failed['error']


def test_a_run_without_its_last_validation_failed(tmp_path, tiny, norm_study):
    """A run stopped between its last checkpoint and that epoch's
    validation ends at once when resumed: its last logged metric is an
    earlier epoch's, and the run failed, not finished with that metric."""
    study = norm_study.Study(str(write_spec(tmp_path / 'spec.py', tiny)))
    run_dir = tmp_path / 'run'
    (run_dir / '20240101_000000/vis_data').mkdir(parents=True)
    (run_dir / '20240101_000000/vis_data/scalars.json').write_text(
        '{"coco/bbox_mAP": 0.2, "step": 1}\n'
    )
    log = run_dir / 'train.log'
    log.write_text(
        'Epoch(val) [1][2/2]    coco/bbox_mAP: 0.2000\n'
        'Saving checkpoint at 2 epochs\n'
        'resumed epoch: 2, iter: 6\n'
    )
    stopped = norm_study.run_outcome(study, str(run_dir), 0, max_epochs=2)
    assert stopped['status'] == 'failed'
    assert stopped['final'] == 0.2 and stopped['last_epoch'] == 1
    assert 'epoch 2, the last, was never validated' in stopped['error']
    assert 'tools/test.py' in stopped['error']
    with log.open('a') as f:
        f.write('Epoch(val) [2][2/2]    coco/bbox_mAP: 0.3000\n')
    (run_dir / '20240101_000000/vis_data/scalars.json').write_text(
        '{"coco/bbox_mAP": 0.2, "step": 1}\n'
        '{"coco/bbox_mAP": 0.3, "step": 2}\n'
    )
    done = norm_study.run_outcome(study, str(run_dir), 0, max_epochs=2)
    assert (done['status'], done['final']) == ('finished', 0.3)


# ---------------------------------------------------------------------- #
# The command line's dry run; one study a directory
# ---------------------------------------------------------------------- #
def test_dry_run_lists_every_command(tmp_path, tiny, capsys, study_cli):
    spec = write_spec(
        tmp_path / 'spec.py', tiny, batch_sizes=[4, 2], lr_mults=[1, 2.5]
    )
    assert (
        study_cli.main(
            [str(spec), '--work-dir', str(tmp_path / 'out'), '--dry-run']
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == '6 runs'
    commands = lines[:-1]
    assert len(commands) == 6
    dn_high_lr = next(
        c for c in commands if 'dnb-r16-goup_bs4_lr2.5x_seed0' in c
    ).split()
    assert dn_high_lr[1] == str(REPO / 'tools/train.py')
    assert 'model.backbone.norm_cfg.g=oup' in dn_high_lr
    assert 'train_dataloader.batch_size=4' in dn_high_lr
    assert '--resume' not in dn_high_lr
    assert not (tmp_path / 'out' / 'runs').exists()


def test_one_study_directory_one_study(tmp_path, tiny, norm_study):
    spec = write_spec(tmp_path / 'spec.py', tiny)
    first = norm_study.StudyRunner(
        norm_study.Study(str(spec)), str(tmp_path / 'out')
    )
    second = norm_study.StudyRunner(
        norm_study.Study(str(spec)), str(tmp_path / 'out')
    )
    lock = first.lock()
    with pytest.raises(
        norm_study.StudyError, match='another norm_study .* is running'
    ):
        second.lock()
    lock.close()
    second.lock().close()


def _one_bn_run(tmp_path, tiny, norm_study):
    """A one-run study (BN) in ``tmp_path/out`` and its run's empty
    folder: (runner, run, run folder)."""
    spec = write_spec(tmp_path / 'spec.py', tiny, norms=['bn'])
    runner = norm_study.StudyRunner(
        norm_study.Study(str(spec)), str(tmp_path / 'out')
    )
    run = runner.study.runs()[0]
    run_dir = Path(runner.run_dir(run))
    run_dir.mkdir(parents=True)
    return runner, run, run_dir


def test_a_runs_epochs_are_its_batch_sizes(tmp_path, tiny, norm_study):
    """What the progress lines count to: a batch size's own max_epochs,
    else the spec's (here the tiny options' 2)."""
    spec = write_spec(
        tmp_path / 'spec.py',
        tiny,
        norms=['bn'],
        batch_sizes=[2, 1],
        batch_cfg_options={'1': {'train_cfg.max_epochs': 1}},
    )
    study = norm_study.Study(str(spec))
    base = norm_study.BaseConfig(study)
    epochs = {
        run.batch_size: norm_study.run_max_epochs(study, base, run)
        for run in study.runs()
    }
    assert epochs == {2: 2, 1: 1}


def test_a_finished_run_of_another_spec_is_refused(tmp_path, tiny, norm_study):
    """A finished run whose recorded options differ from what the spec now
    gives it (another epoch count at its batch size) stops the study before
    anything trains, naming the run and the options; the same options
    pass."""
    runner, run, run_dir = _one_bn_run(tmp_path, tiny, norm_study)
    command = norm_study.train_command(
        runner.study, runner.base, run, str(run_dir), True
    )
    state = dict(command=command, result=dict(status='finished'))
    (run_dir / 'norm_study_run.json').write_text(json.dumps(state))
    runner.check_finished_runs_match()  # as the spec gives it: passes

    epochs = next(o for o in command if o.startswith('train_cfg.max_epochs='))
    state['command'] = [
        'train_cfg.max_epochs=99' if o == epochs else o for o in command
    ]
    (run_dir / 'norm_study_run.json').write_text(json.dumps(state))
    with pytest.raises(
        norm_study.StudyError,
        match=r'1 finished run\(s\) trained with options the spec no longer '
        r'gives them, e.g. bn_bs2_lr1x_seed0: it trained with '
        rf'train_cfg.max_epochs=99 where the spec now gives {epochs}\. '
        r'Delete their folders',
    ):
        runner.run()
    assert not (run_dir / 'train.log').exists()


# ---------------------------------------------------------------------- #
# Processes: a two-process study killed, a run still alive, lost results
# ---------------------------------------------------------------------- #
@pytest.mark.slow
def test_sigkill_of_a_two_process_study_leaves_no_training(
    tmp_path, tiny, tool_env
):
    """gpus=2 launches torch.distributed.run, whose workers live in
    sessions of their own: before the watchdog, SIGKILL of the study left
    them training under PID 1."""
    spec = write_spec(tmp_path / 'spec.py', tiny, norms=['bn'], gpus=2)
    out = tmp_path / 'study'
    run_dir = out / 'runs' / 'bn_bs2_lr1x_seed0'
    env = dict(tool_env, PORT=str(free_port()))
    study = subprocess.Popen(
        _study_cmd(spec, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=env,
    )
    log = run_dir / 'train.log'
    deadline = time.time() + 300
    # Both ranks are up once the training logs its first iteration.
    while not (log.is_file() and 'Epoch(train)' in log.read_text()):
        assert study.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, 'the run did not start training'
        time.sleep(0.2)
    assert len(_processes_writing(run_dir)) >= 3  # launcher and two ranks
    study.send_signal(signal.SIGKILL)
    study.wait()
    deadline = time.time() + 60
    while _processes_writing(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_writing(run_dir) == []


def test_a_run_still_training_is_not_started_beside(
    tmp_path, tiny, norm_study
):
    """A run whose recorded process group still has a process working in
    its directory is refused, naming the group and its pids."""
    runner, run, run_dir = _one_bn_run(tmp_path, tiny, norm_study)
    alive = subprocess.Popen(
        [sys.executable, '-c', 'import time; time.sleep(120)', str(run_dir)],
        start_new_session=True,
    )
    try:
        # The process as the study will look for it (on a loaded machine a
        # clean-clone CI once saw none and trained the run).
        deadline = time.time() + 60
        while live_processes(alive.pid, str(run_dir)) != [alive.pid]:
            assert alive.poll() is None, f'exited: {alive.returncode}'
            assert time.time() < deadline, 'not seen in /proc'
            time.sleep(0.1)
        (run_dir / 'norm_study_run.json').write_text(
            json.dumps(dict(pgid=alive.pid, segments=[[1.0, None]]))
        )
        with pytest.raises(
            norm_study.StudyError,
            match=rf'still running \(process group '
            rf'{alive.pid}, pids {alive.pid}\).*kill -- '
            rf'-{alive.pid}',
        ):
            runner.run()
        assert alive.poll() is None
        assert not (run_dir / 'train.log').exists()
    finally:
        alive.kill()
        alive.wait()


def test_report_only_without_runs_keeps_committed_results(
    tmp_path, study_cli, norm_study
):
    """--report-only on a folder of committed results (no runs/) used to
    overwrite them with pending rows."""
    import shutil

    committed = REPO / 'docs/studies/norm_study_mobilenetv2_shapes_cls'
    folder = tmp_path / 'results'
    shutil.copytree(committed, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    spec = REPO / 'configs/studies/norm_study_mobilenetv2_shapes_cls.py'
    with pytest.raises(SystemExit, match='has no runs/ folder'):
        study_cli.main([str(spec), '--work-dir', str(folder), '--report-only'])
    # Any writer refuses to drop a run with an outcome, runs/ or not.
    (folder / 'runs').mkdir()
    runner = norm_study.StudyRunner(norm_study.Study(str(spec)), str(folder))
    with pytest.raises(
        norm_study.StudyError, match=r'holds 20 run\(s\) with an outcome'
    ):
        runner.write_results()
    with pytest.raises(norm_study.StudyError, match='holds 20 run'):
        runner.run()
    assert {name: (folder / name).read_bytes() for name in before} == before


@pytest.mark.slow
def test_a_seeded_run_reproduces(tmp_path, tool_env, norm_study):
    """The same classification run twice (one thread, deterministic, data
    loaded in the training process): the same curve, bit for bit. The study
    runs in this process (its command line is the killed study's test),
    each training in a real process as always."""
    from dn_mmdet.analysis.study import read_curve
    from dn_mmdet.datasets.shapes_cls_generator import (
        generate_shapes_cls_dataset,
    )

    root = tmp_path / 'cls'
    generate_shapes_cls_dataset(
        str(root), num_train=16, num_val=8, seed=0, size=32
    )
    options = {
        'train_cfg.max_epochs': 2,
        'param_scheduler.1.T_max': 1,
        'param_scheduler.1.end': 2,
        'default_hooks.logger.interval': 1,
    }
    for loader in ('train', 'val', 'test'):
        options[f'{loader}_dataloader.dataset.data_root'] = f'{root}/'
        options[f'{loader}_dataloader.dataset.classes'] = (
            f'{root}/meta/classes.txt'
        )
    lines = [
        f"_base_ = ['{NORMS_BASE}']",
        "base_config = 'configs/studies/_base_/claims/"
        "mobilenet-v2-x0.5-bn_1xb32-sgd-16e_shapes-cls64.py'",
        "metric = 'accuracy/top1'",
        "norms = ['dnb-r16-g1']",
        'batch_sizes = [4]',
        'threads = 1',
        f'cfg_options = {options!r}',
    ]
    spec = tmp_path / 'spec.py'
    spec.write_text('\n'.join(lines) + '\n')
    curves, losses = [], []
    for out in ('a', 'b'):
        runner = norm_study.StudyRunner(
            norm_study.Study(str(spec)), str(tmp_path / out), env=tool_env
        )
        assert runner.run() == 0  # no run failed
        run_dir = str(tmp_path / out / 'runs' / 'dnb-r16-g1_bs4_lr1x_seed0')
        curves.append(read_curve(run_dir, 'accuracy/top1'))
        losses.append(read_curve(run_dir, 'loss'))
    assert sorted(curves[0]) == [1, 2]
    assert curves[0] == curves[1]
    # Every iteration's loss, not only the coarse 8-image accuracy.
    assert len(losses[0]) == 8
    assert losses[0] == losses[1]
