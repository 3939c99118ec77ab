"""The norm benchmark: ``tools/analysis/benchmark_norm.py`` run end to end
at a toy size in a real process (the figures themselves are measured, not
asserted), its argument checks, and the package's plan, workers, medians
and summary (dn_mmdet.analysis.benchmark) on given figures."""

import json
import math
import runpy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from helpers import REPO, run_python

from dn_mmdet.analysis import benchmark as B
from dn_mmdet.analysis.benchmark import report, sweep

TOOL = REPO / 'tools/analysis/benchmark_norm.py'
VARIANTS = ['bn', 'dnb-r16-goup']
E2E_MODELS = ['layer', 'mmdet-mobilenetv2']  # the tables' order


@pytest.fixture(scope='module')
def cli():
    """The CLI's functions (its ``parse_args``), without running it."""
    return SimpleNamespace(**runpy.run_path(str(TOOL)))


def run_tool(out, env, *options):
    """Run the tool with ``options`` at one thread, one timed step, BN and
    DN-B on the CPU, JSON to ``out``: (stdout, the JSON)."""
    command = [sys.executable, str(TOOL), *options, '--threads', '1']
    command += ['--repeat', '1', '--warmup', '0', '--variants', *VARIANTS]
    command += ['--device', 'cpu', '--out', str(out)]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.fixture(scope='module')
def bench(tmp_path_factory, tool_env):
    """One worker per (model, variant): an mmdet backbone with DN through
    norm_cfg and the lone layers (every model is built, through the
    registry, by test_every_model_takes_its_norm_through_the_registry)."""
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    return run_tool(
        out,
        tool_env,
        '--models',
        'mmdet-mobilenetv2',
        'layer',
        '--batch-sizes',
        '2',
        '--sizes',
        '32',
        '--runs',
        '1',
        '--keep-freed-memory',
    )


@pytest.mark.slow
def test_benchmark_prints_a_finite_row_for_every_case(bench):
    stdout, result = bench
    assert (
        'batch x size 2x32 px, device cpu, threads 1, median wall time '
        'of 1, glibc keeps freed memory; DN CPU kernel: in use'
    ) in stdout
    assert '4 workers: 2 model(s) x 1 batch x size case(s)' in stdout
    assert '[4/4] run 1: mmdet-mobilenetv2 b2 32 dnb-r16-goup ...' in stdout
    lines = stdout.splitlines()
    for model in E2E_MODELS:
        table = next(
            i for i, line in enumerate(lines) if line.startswith(f'{model}: ')
        )
        rows = [line.split(' | ') for line in lines[table + 4 : table + 6]]
        assert [row[:3] for row in rows] == [
            ['| 2', '32', v] for v in VARIANTS
        ]
        for row in rows:
            figures = [row[3], row[5]] + ([] if model == 'layer' else [row[7]])
            assert all(
                math.isfinite(float(f)) and float(f) >= 0 for f in figures
            )
    assert [
        (r['model'], r['batch'], r['size'], r['variant'])
        for r in result['results']
    ] == [(m, 2, 32, v) for m in E2E_MODELS for v in VARIANTS]
    assert len(result['runs']) == 4
    assert all(r['train_ms'] > 0 for r in result['runs'])
    assert all(
        r['infer_ms'] > 0 for r in result['runs'] if r['model'] != 'layer'
    )


@pytest.mark.slow
def test_summary_line_per_model_names_the_worst_ratio_of_the_json(bench):
    stdout, result = bench
    for model in E2E_MODELS:
        rows = {
            r['variant']: r for r in result['results'] if r['model'] == model
        }
        parts = []
        for key, label in (
            ('train_ms', 'train'),
            ('infer_ms', 'infer'),
            ('train_peak_mib', 'train peak mem'),
        ):
            base = rows['bn'].get(key)
            if base is None or base <= 0:
                parts.append(f'{label} -')
            else:
                parts.append(
                    f'{label} {rows["dnb-r16-goup"][key] / base:.2f}x'
                    ' (b2 32 dnb-r16-goup)'
                )
        line = f'{model}: worst ' + ', '.join(parts)
        assert line in stdout.splitlines()
    assert [e['model'] for e in result['summary']] == E2E_MODELS


def _sweep(
    models,
    cases,
    variants=VARIANTS,
    runs=1,
    interleave=False,
    **worker_settings,
):
    return B.Sweep(
        models=models,
        cases=cases,
        variants=variants,
        runs=runs,
        worker=B.WorkerSettings(interleave=interleave, **worker_settings),
    )


def test_plan_interleaves_variants_within_each_run():
    plan = _sweep(
        ['mmdet-mobilenetv2', 'resnet50'],
        [(2, 64), (2, 128), (4, 64), (4, 128)],
        runs=2,
    )
    jobs = B.plan_jobs(plan)
    assert len(jobs) == 2 * 2 * 2 * 2 * 2
    # every case once a run; the variants of a case one after the other
    assert jobs[:4] == [
        (0, 'mmdet-mobilenetv2', 2, 64, 'bn'),
        (0, 'mmdet-mobilenetv2', 2, 64, 'dnb-r16-goup'),
        (0, 'mmdet-mobilenetv2', 2, 128, 'bn'),
        (0, 'mmdet-mobilenetv2', 2, 128, 'dnb-r16-goup'),
    ]
    assert [j[1:] for j in jobs[:16]] == [j[1:] for j in jobs[16:]]
    assert {j[0] for j in jobs[16:]} == {1}


def test_cli_sweep_of_its_arguments(cli):
    """The product of --batch-sizes and --sizes, or --cases in its place
    (each once, in the given order); models in the tables' order."""
    args = cli.parse_args(
        [
            '--models',
            'resnet50',
            'mmdet-mobilenetv2',
            '--batch-sizes',
            '2',
            '4',
            '--sizes',
            '64',
            '128',
            '--device',
            'cpu',
            '--runs',
            '2',
        ]
    )
    plan = cli.sweep_of(args)
    assert plan.models == ['mmdet-mobilenetv2', 'resnet50']
    assert plan.cases == [(2, 64), (2, 128), (4, 64), (4, 128)]
    assert (plan.runs, plan.worker.device) == (2, 'cpu')
    args = cli.parse_args(
        [
            '--models',
            'resnet18',
            '--cases',
            '2x128',
            '4X224',
            '2x128',
            '--variants',
            'bn',
        ]
    )
    assert args.cases == [(2, 128), (4, 224)]
    assert report.format_header(cli.sweep_of(args), 'in use').startswith(
        'batch x size 2x128 4x224 px'
    )
    assert cli.parse_args([]).models == ['layer', 'mobilenetv2dn', 'ssdlite']


def test_former_option_aliases_are_gone(cli, capsys):
    """--parts, --batch-size and --size were removed (use --models,
    --batch-sizes, --sizes)."""
    for argv in (
        ['--parts', 'backbone'],
        ['--batch-size', '16'],
        ['--size', '128'],
    ):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert 'unrecognized arguments' in capsys.readouterr().err


def _result(model, batch, size, variant, train, infer, mem):
    return dict(
        model=model,
        batch=batch,
        size=size,
        variant=variant,
        train_ms=train,
        train_peak_mib=mem,
        infer_ms=infer,
        infer_peak_mib=1.0,
    )


def test_summary_picks_the_largest_ratio_over_the_sweep():
    variants = ['bn', 'dnb-r16-g1', 'dnb-r16-goup', 'sn']
    plan = _sweep(['resnet18'], [(2, 64), (8, 64)], variants)
    r = _result
    results = [
        r('resnet18', 2, 64, 'bn', 100, 10, 50),
        r('resnet18', 2, 64, 'dnb-r16-g1', 110, 12, 40),  # infer 1.20
        r('resnet18', 2, 64, 'dnb-r16-goup', 105, 11, 45),
        r('resnet18', 2, 64, 'sn', 300, 30, 60),
        r('resnet18', 8, 64, 'bn', 400, 40, 0.0),  # RSS not grown
        r('resnet18', 8, 64, 'dnb-r16-g1', 420, 41, 10),
        r('resnet18', 8, 64, 'dnb-r16-goup', 500, 44, 10),  # train 1.25
        r('resnet18', 8, 64, 'sn', 800, 40, 10),
    ]
    summary = B.summarise(results, plan.models, plan.variants)
    assert [B.format_summary_line(e) for e in summary] == [
        'resnet18: worst train 1.25x (b8 64 dnb-r16-goup), infer 1.20x '
        '(b2 64 dnb-r16-g1), train peak mem 0.90x (b2 64 dnb-r16-goup)',
        'resnet18 [sn]: worst train 3.00x (b2 64 sn), infer 3.00x (b2 64 sn),'
        ' train peak mem 1.20x (b2 64 sn)',
    ]
    table = B.format_table(results, plan, 'in use')
    assert (
        '| 8 | 64 | dnb-r16-goup | 500.0 | 1.25 | 10.0 | - | 44.0 | 1.10 '
        '| 1.0 |' in table.splitlines()
    )
    assert table.splitlines()[-2:] == [
        B.format_summary_line(e) for e in summary
    ]


def test_median_over_runs_per_case():
    runs = [
        _result('resnet18', 2, 64, v, t, t / 10, 5)
        for t in (100, 300, 200)
        for v in ('bn', 'dnb-r16-goup')
    ]
    runs[1]['train_ms'] = 1000  # one run of DN's
    results = B.median_over_runs(runs)
    assert [(r['variant'], r['train_ms'], r['infer_ms']) for r in results] == [
        ('bn', 200, 20.0),
        ('dnb-r16-goup', 300, 20.0),
    ]


def test_interleaved_ratio_is_the_median_of_the_workers_own():
    """With interleave each worker's DN/BN ratio is measured side by
    side; the table's ratio is their median (1.03), not the ratio of the
    medians of times from different workers (190 / 200).
    Without paired ratios (a process per variant) it is the latter."""
    plan = _sweep(['resnet18'], [(2, 64)], interleave=True)
    runs = []
    for bn_ms, dn_ms in ((100, 150), (200, 190), (300, 310)):
        for v, ms in (('bn', bn_ms), ('dnb-r16-goup', dn_ms)):
            runs.append(_result('resnet18', 2, 64, v, ms, ms / 10, 5))
            runs[-1].update(train_ms_x_bn=ms / bn_ms, infer_ms_x_bn=ms / bn_ms)
    results = B.median_over_runs(runs)
    bn, dn = results
    assert (bn['train_ms'], dn['train_ms']) == (200, 190)
    assert B.ratio_of(dn, bn, 'train_ms') == pytest.approx(310 / 300)
    assert B.ratio_of(bn, bn, 'infer_ms') == 1.0
    [entry] = B.summarise(results, plan.models, plan.variants)
    assert entry['train_ms']['ratio'] == pytest.approx(310 / 300)
    row = next(
        line
        for line in B.format_table(results, plan, 'in use').splitlines()
        if line.startswith('| 2 | 64 | dnb-r16-goup')
    )
    assert row.split(' | ')[4] == '1.03'
    for r in runs:
        del r['train_ms_x_bn'], r['infer_ms_x_bn']
    bn, dn = B.median_over_runs(runs)
    assert B.ratio_of(dn, bn, 'train_ms') == pytest.approx(190 / 200)


def test_estimate_left_from_the_workers_done():
    """A case measured in an earlier run takes as long again; another the
    fastest start-up plus its model's time per pixel so far."""
    jobs = [
        (0, 'resnet18', 2, 64, 'bn'),
        (0, 'resnet18', 2, 128, 'bn'),
        (1, 'resnet18', 2, 64, 'bn'),
        (1, 'resnet18', 2, 256, 'bn'),
    ]
    assert sweep.estimate_left(jobs, []) is None
    done = [(jobs[0], 3.0), (jobs[1], 6.0)]
    # start-up 3 s (the fastest); per pixel, the median of the two
    # workers' (0 and 3 s / 2*128*128)
    rate = 1.5 / (2 * 128 * 128)
    assert sweep.estimate_left(jobs, done) == pytest.approx(
        3.0 + 3.0 + rate * 2 * 256 * 256
    )
    assert [sweep.format_duration(s) for s in (42, 185, 3720)] == [
        '42 s',
        '3 min 05 s',
        '1 h 02 min',
    ]


@pytest.mark.parametrize(
    'argv, message',
    [
        (
            ['--models', 'resnet101'],
            "argument --models: invalid choice: 'resnet101'",
        ),
        (
            ['--batch-sizes', '2', '1'],
            '--batch-sizes must be >= 2 (got 1): BN '
            'and DN train on batch statistics',
        ),
        (['--sizes', '16'], '--sizes must be >= 32 (got 16)'),
        (
            ['--runs', '0'],
            "argument --runs: expected a whole number >= 1, got '0'",
        ),
        (
            ['--repeat', 'x'],
            "argument --repeat: expected a whole number >= 1, got 'x'",
        ),
        (
            ['--warmup', '-1'],
            'argument --warmup: expected a whole number >= 0',
        ),
        # issue 25: --threads 0 was silently torch's default, -2 a traceback
        (
            ['--threads', '0'],
            "argument --threads: expected a whole number >= 1, got '0'",
        ),
        (
            ['--threads', '-2'],
            "argument --threads: expected a whole number >= 1, got '-2'",
        ),
        (
            ['--cases', '4x224', '8'],
            '--cases must look like 4x224 (batch x size), got 4x224 8',
        ),
        (['--cases', '1x224'], '--batch-sizes must be >= 2 (got 1)'),
        (['--config', 'no/such.py'], '--config no/such.py: no such file'),
    ],
)
def test_benchmark_rejects_bad_options(cli, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.parse_args(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_cuda_device_is_a_usage_error(cli, capsys, monkeypatch):
    """Issue 25: ``--device cuda`` on a CPU torch was a traceback from the
    first worker; now the usage error, before any worker starts (no device
    visible: the same on a machine with a GPU). The tool's real process is
    the other end-to-end tests'."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit) as exit:
        cli.parse_args(['--device', 'cuda', '--models', 'resnet18'])
    assert exit.value.code == 2
    out, err = capsys.readouterr()
    assert 'Traceback' not in err
    assert (
        f'--device cuda: this torch ({torch.__version__}) sees no CUDA '
        'device; use --device cpu (or auto)' in err
    )
    assert out == ''


def test_every_model_takes_its_norm_through_the_registry():
    """DN given as a user's ``norm_cfg`` (registry type 'DN') replaces every
    norm of each backbone (a detector's backbone)."""
    from mmdet.models.backbones import MobileNetV2, ResNet

    from dn_mmdet.norm import DynamicNorm2d

    built = {}
    for model in B.MODELS:
        if model == 'layer':
            continue
        net = B.build_model(model, dict(type='DN', r=16, g='oup'))
        built[model] = net
        backbone = net.backbone if model in B.DETECTORS else net
        dns = [m for m in backbone.modules() if isinstance(m, DynamicNorm2d)]
        # BatchNorms only as DN's statistics children
        bns = [
            name
            for name, m in backbone.named_modules()
            if isinstance(m, nn.BatchNorm2d)
            and not isinstance(
                backbone.get_submodule(name.rpartition('.')[0]), DynamicNorm2d
            )
        ]
        assert dns and bns == []
        assert all(dn.r == 16 and dn.g == 'oup' for dn in dns)
    assert type(built['mmdet-mobilenetv2']) is MobileNetV2
    assert [
        (type(built[m]), built[m].depth, built[m].norm_eval)
        for m in ('resnet18', 'resnet50')
    ] == [(ResNet, 18, False), (ResNet, 50, False)]
    assert built['ssdlite-shapes'].bbox_head.num_classes == 5
    assert built['ssdlite'].bbox_head.num_classes == 80


def test_reference_variants_build_the_reference_layer():
    """The ``-reference`` rows measure the straightforward DN
    (dn_mmdet/norm/reference.py), with the checkpoint names of DN."""
    from mmcv.cnn import build_norm_layer

    from dn_mmdet.norm.reference import DynamicNorm2dReference

    name, layer = build_norm_layer(B.norm_cfg_of('dnb-r16-goup-reference'), 32)
    assert name == 'dn' and type(layer) is DynamicNorm2dReference
    assert layer.g == 'oup' and layer.r == 16


def test_interleave_times_all_variants_in_one_worker():
    """interleave: one worker a case, timing every variant in turns in
    its own process (training and inference; no peak memory, which needs a
    process per variant)."""
    plan = _sweep(
        ['layer', 'resnet18'],
        [(2, 32), (4, 32)],
        runs=2,
        interleave=True,
        repeat=2,
        warmup=0,
        threads=1,
    )
    jobs = B.plan_jobs(plan)
    assert [job[1:] for job in jobs[:4]] == [
        ('layer', 2, 32, 'bn,dnb-r16-goup'),
        ('layer', 4, 32, 'bn,dnb-r16-goup'),
        ('resnet18', 2, 32, 'bn,dnb-r16-goup'),
        ('resnet18', 4, 32, 'bn,dnb-r16-goup'),
    ]
    assert len(jobs) == 8 and [job[0] for job in jobs] == [0] * 4 + [1] * 4
    command = B.worker_command(plan.worker, *jobs[0][1:])
    assert command[1:3] == ['-m', 'dn_mmdet.analysis.benchmark']
    assert B.WorkerSettings(**json.loads(command[3])) == plan.worker
    results = B.run_worker(plan.worker, 'resnet18', VARIANTS, 2, 32)
    assert [(r['model'], r['variant']) for r in results] == [
        ('resnet18', v) for v in VARIANTS
    ]
    for r in results:
        assert r['train_ms'] > 0 and r['infer_ms'] > 0
        assert 'train_peak_mib' not in r and 'infer_peak_mib' not in r
        for phase in ('train', 'infer'):  # the worker's own ratio to BN
            assert r[f'{phase}_ms_x_bn'] == (
                r[f'{phase}_ms'] / results[0][f'{phase}_ms']
            )
    table = B.format_table(B.median_over_runs(results), plan, 'in use')
    assert 'variants interleaved in one process' in table.splitlines()[0]
    row = next(
        line
        for line in table.splitlines()
        if line.startswith('| 2 | 32 | dnb-r16-goup')
    )
    assert row.split(' | ')[5] == '-'  # no peak memory, no ratio


@pytest.mark.slow
def test_before_runs_each_worker_again_with_the_other_checkout(
    tmp_path, tool_env
):
    """``--before CHECKOUT``: every worker again with that checkout's
    dn_mmdet (here this one), the ratios side by side, and the JSON's runs
    say which tree each comes from (they lost it before)."""
    stdout, results = run_tool(
        tmp_path / 'bench.json',
        tool_env,
        '--models',
        'layer',
        '--cases',
        '2x32',
        '--interleave',
        '--before',
        str(REPO),
    )
    assert 'Ratios to BN, before and after:' in stdout
    runs = results['runs']
    assert [(r['tree'], r['variant']) for r in runs] == [
        ('after', 'bn'),
        ('after', 'dnb-r16-goup'),
        ('before', 'bn'),
        ('before', 'dnb-r16-goup'),
    ]


def test_a_failed_worker_names_its_case(monkeypatch):
    """A worker that fails stops the sweep with its case and stderr."""
    plan = _sweep(
        ['resnet18'],
        [(2, 32)],
        variants=['bn'],
        repeat=1,
        warmup=0,
        config='no/such/config.py',
    )
    monkeypatch.setattr(
        sweep,
        'worker_command',
        lambda *a: [
            sys.executable,
            '-c',
            'import sys; sys.exit("worker broke")',
        ],
    )
    with pytest.raises(
        B.WorkerError,
        match='benchmark worker resnet18 b2 32 bn failed:\nworker broke',
    ):
        B.run_sweep(plan, log=lambda line: None)


def test_timing_interleaves_the_functions():
    """Each round calls every function once, in turn, after the warm-up
    calls; the result is each one's median."""
    from dn_mmdet.analysis.benchmark import timing

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in 'ab'}
    times = timing.interleaved_seconds(fns, rounds=3, warmup=2, calls=2)
    assert calls == ['a'] * 2 + ['b'] * 2 + ['a', 'a', 'b', 'b'] * 3
    assert set(times) == {'a', 'b'} and all(t >= 0 for t in times.values())
    with pytest.raises(ValueError, match='rounds and calls must be >= 1'):
        timing.interleaved_seconds(fns, rounds=0)


_PEAK_MEMORY = """
import torch
from dn_mmdet.analysis.benchmark import timing
with timing.PeakMemory('cpu') as mem:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    del block
print(mem.peak_mib)
"""


@pytest.mark.slow
def test_peak_memory_counts_what_a_block_allocates():
    # In a fresh process, as the benchmark's workers measure: in the test
    # worker, memory freed by earlier tests may serve the block without
    # raising the resident set at all.
    proc = run_python(['-c', _PEAK_MEMORY], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) >= 60
