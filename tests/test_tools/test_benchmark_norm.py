"""tools/analysis/benchmark_norm.py: one run end to end at a toy size (the
figures themselves are measured by the tool, not asserted), and the sweep's
plan, medians and summary on given figures."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools/analysis/benchmark_norm.py'
VARIANTS = ['bn', 'dnb-r16-goup']
E2E_MODELS = ['layer', 'mmdet-mobilenetv2', 'resnet18']  # the tables' order


@pytest.fixture(scope='module')
def bench(tmp_path_factory, tool_env):
    """One worker per (model, variant): two mmdet backbones with DN through
    norm_cfg and the lone layers (the former ``--parts layer``)."""
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--models', 'resnet18',
         'mmdet-mobilenetv2', '--parts', 'layer', '--batch-sizes', '2',
         '--sizes', '32', '--threads', '1', '--repeat', '1', '--warmup', '0',
         '--runs', '1', '--keep-freed-memory', '--variants', *VARIANTS,
         '--device', 'cpu', '--out', str(out)],
        capture_output=True, text=True, env=tool_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_benchmark_prints_a_finite_row_for_every_case(bench):
    stdout, result = bench
    assert ('batch x size 2x32 px, device cpu, threads 1, median wall time '
            'of 1, glibc keeps freed memory; DN CPU kernel: in use'
            ) in stdout
    assert '6 workers: 3 model(s) x 1 batch x size case(s)' in stdout
    assert '[6/6] run 1: resnet18 b2 32 dnb-r16-goup ...' in stdout
    lines = stdout.splitlines()
    for model in E2E_MODELS:
        table = next(i for i, line in enumerate(lines)
                     if line.startswith(f'{model}: '))
        rows = [line.split(' | ') for line in lines[table + 4:table + 6]]
        assert [row[:3] for row in rows] == [['| 2', '32', v]
                                             for v in VARIANTS]
        for row in rows:
            figures = [row[3], row[5]] + ([] if model == 'layer' else [row[7]])
            assert all(math.isfinite(float(f)) and float(f) >= 0
                       for f in figures)
    assert [(r['model'], r['batch'], r['size'], r['variant'])
            for r in result['results']] == [
                (m, 2, 32, v) for m in E2E_MODELS for v in VARIANTS]
    assert len(result['runs']) == 6
    assert all(r['train_ms'] > 0 for r in result['runs'])
    assert all(r['infer_ms'] > 0 for r in result['runs']
               if r['model'] != 'layer')


def test_summary_line_per_model_names_the_worst_ratio_of_the_json(bench):
    stdout, result = bench
    for model in E2E_MODELS:
        rows = {r['variant']: r for r in result['results']
                if r['model'] == model}
        parts = []
        for key, label in (('train_ms', 'train'), ('infer_ms', 'infer'),
                           ('train_peak_mib', 'train peak mem')):
            base = rows['bn'].get(key)
            if base is None or base <= 0:
                parts.append(f'{label} -')
            else:
                parts.append(f"{label} {rows['dnb-r16-goup'][key] / base:.2f}x"
                             ' (b2 32 dnb-r16-goup)')
        line = f'{model}: worst ' + ', '.join(parts)
        assert line in stdout.splitlines()
    assert [e['model'] for e in result['summary']] == E2E_MODELS


def test_plan_interleaves_variants_within_each_run(load_tool):
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args([
        '--models', 'resnet50', 'mmdet-mobilenetv2', '--batch-sizes', '2',
        '4', '--sizes', '64', '128', '--variants', 'bn', 'dnb-r16-goup',
        '--runs', '2'])
    jobs = tool.plan_jobs(args)
    assert len(jobs) == 2 * 2 * 2 * 2 * 2
    # every case once a run; the variants of a case one after the other
    assert jobs[:4] == [(0, 'mmdet-mobilenetv2', 2, 64, 'bn'),
                        (0, 'mmdet-mobilenetv2', 2, 64, 'dnb-r16-goup'),
                        (0, 'mmdet-mobilenetv2', 2, 128, 'bn'),
                        (0, 'mmdet-mobilenetv2', 2, 128, 'dnb-r16-goup')]
    assert [j[1:] for j in jobs[:16]] == [j[1:] for j in jobs[16:]]
    assert {j[0] for j in jobs[16:]} == {1}


def test_explicit_cases_replace_the_product(load_tool):
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args(['--models', 'resnet18', '--cases', '2x128',
                            '4X224', '2x128', '--variants', 'bn'])
    assert args.cases == [(2, 128), (4, 224)]
    assert [j[2:4] for j in tool.plan_jobs(args)] == [(2, 128), (4, 224)]
    assert tool.format_header(args, 'in use').startswith(
        'batch x size 2x128 4x224 px')


def test_former_options_still_work(load_tool):
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args(['--parts', 'backbone', 'detector',
                            '--batch-size', '16', '--size', '128'])
    assert args.models == ['mobilenetv2dn', 'ssdlite']
    assert (args.batch_sizes, args.sizes) == ([16], [128])
    assert tool.parse_args([]).models == ['layer', 'mobilenetv2dn', 'ssdlite']


def _result(model, batch, size, variant, train, infer, mem):
    return dict(model=model, batch=batch, size=size, variant=variant,
                train_ms=train, train_peak_mib=mem, infer_ms=infer,
                infer_peak_mib=1.0)


def test_summary_picks_the_largest_ratio_over_the_sweep(load_tool):
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args([
        '--models', 'resnet18', '--batch-sizes', '2', '8', '--sizes', '64',
        '--variants', 'bn', 'dnb-r16-g1', 'dnb-r16-goup', 'sn'])
    r = _result
    results = [
        r('resnet18', 2, 64, 'bn', 100, 10, 50),
        r('resnet18', 2, 64, 'dnb-r16-g1', 110, 12, 40),   # infer 1.20
        r('resnet18', 2, 64, 'dnb-r16-goup', 105, 11, 45),
        r('resnet18', 2, 64, 'sn', 300, 30, 60),
        r('resnet18', 8, 64, 'bn', 400, 40, 0.0),          # RSS not grown
        r('resnet18', 8, 64, 'dnb-r16-g1', 420, 41, 10),
        r('resnet18', 8, 64, 'dnb-r16-goup', 500, 44, 10),  # train 1.25
        r('resnet18', 8, 64, 'sn', 800, 40, 10),
    ]
    summary = tool.summarise(results, args)
    assert [tool.format_summary_line(e) for e in summary] == [
        'resnet18: worst train 1.25x (b8 64 dnb-r16-goup), infer 1.20x '
        '(b2 64 dnb-r16-g1), train peak mem 0.90x (b2 64 dnb-r16-goup)',
        'resnet18 [sn]: worst train 3.00x (b2 64 sn), infer 3.00x (b2 64 sn),'
        ' train peak mem 1.20x (b2 64 sn)']
    table = tool.format_table(results, args, 'in use')
    assert '| 8 | 64 | dnb-r16-goup | 500.0 | 1.25 | 10.0 | - | 44.0 | 1.10 '\
        '| 1.0 |' in table.splitlines()
    assert table.splitlines()[-2:] == [
        tool.format_summary_line(e) for e in summary]


def test_median_over_runs_per_case(load_tool):
    tool = load_tool('analysis/benchmark_norm')
    runs = [_result('resnet18', 2, 64, v, t, t / 10, 5)
            for t in (100, 300, 200) for v in ('bn', 'dnb-r16-goup')]
    runs[1]['train_ms'] = 1000  # one run of DN's
    results = tool.median_over_runs(runs)
    assert [(r['variant'], r['train_ms'], r['infer_ms'])
            for r in results] == [('bn', 200, 20.0),
                                  ('dnb-r16-goup', 300, 20.0)]


def test_interleaved_ratio_is_the_median_of_the_workers_own(load_tool):
    """With --interleave each worker's DN/BN ratio is measured side by
    side; the table's ratio is their median (1.03), not the ratio of the
    medians of times from different workers (190 / 200).
    Without paired ratios (a process per variant) it is the latter."""
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args(['--models', 'resnet18', '--cases', '2x64',
                            '--variants', *VARIANTS, '--interleave'])
    runs = []
    for bn_ms, dn_ms in ((100, 150), (200, 190), (300, 310)):
        for v, ms in (('bn', bn_ms), ('dnb-r16-goup', dn_ms)):
            runs.append(_result('resnet18', 2, 64, v, ms, ms / 10, 5))
            runs[-1].update(train_ms_x_bn=ms / bn_ms, infer_ms_x_bn=ms / bn_ms)
    results = tool.median_over_runs(runs)
    bn, dn = results
    assert (bn['train_ms'], dn['train_ms']) == (200, 190)
    assert tool.ratio_of(dn, bn, 'train_ms') == pytest.approx(310 / 300)
    assert tool.ratio_of(bn, bn, 'infer_ms') == 1.0
    [entry] = tool.summarise(results, args)
    assert entry['train_ms']['ratio'] == pytest.approx(310 / 300)
    row = next(line for line in tool.format_table(results, args, 'in use')
               .splitlines() if line.startswith('| 2 | 64 | dnb-r16-goup'))
    assert row.split(' | ')[4] == '1.03'
    for r in runs:
        del r['train_ms_x_bn'], r['infer_ms_x_bn']
    bn, dn = tool.median_over_runs(runs)
    assert tool.ratio_of(dn, bn, 'train_ms') == pytest.approx(190 / 200)


@pytest.mark.parametrize('argv, message', [
    (['--models', 'resnet101'], "argument --models: invalid choice: "
     "'resnet101'"),
    (['--batch-sizes', '2', '1'], '--batch-sizes must be >= 2 (got 1): BN '
     'and DN train on batch statistics'),
    (['--sizes', '16'], '--sizes must be >= 32 (got 16)'),
    (['--runs', '0'], '--runs and --repeat must be >= 1'),
    (['--cases', '4x224', '8'], '--cases must look like 4x224 (batch x '
     'size), got 4x224 8'),
    (['--cases', '1x224'], '--batch-sizes must be >= 2 (got 1)'),
])
def test_benchmark_rejects_bad_options(load_tool, capsys, argv, message):
    tool = load_tool('analysis/benchmark_norm')
    with pytest.raises(SystemExit) as exit:
        tool.parse_args(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_every_model_takes_its_norm_through_the_registry(load_tool):
    """DN given as a user's ``norm_cfg`` (registry type 'DN') replaces every
    norm of each backbone (a detector's backbone)."""
    from mmdet.models.backbones import MobileNetV2, ResNet

    from dn_mmdet.norm import DynamicNorm2d
    tool = load_tool('analysis/benchmark_norm')
    built = {}
    for model in tool.MODELS:
        if model == 'layer':
            continue
        net = tool.build_model(model, dict(type='DN', r=16, g='oup'))
        built[model] = net
        backbone = net.backbone if model in tool.DETECTORS else net
        dns = [m for m in backbone.modules() if isinstance(m, DynamicNorm2d)]
        # BatchNorms only as DN's statistics children
        bns = [name for name, m in backbone.named_modules()
               if isinstance(m, nn.BatchNorm2d) and not isinstance(
                   backbone.get_submodule(name.rpartition('.')[0]),
                   DynamicNorm2d)]
        assert dns and bns == []
        assert all(dn.r == 16 and dn.g == 'oup' for dn in dns)
    assert type(built['mmdet-mobilenetv2']) is MobileNetV2
    assert [(type(built[m]), built[m].depth, built[m].norm_eval)
            for m in ('resnet18', 'resnet50')] == [(ResNet, 18, False),
                                                    (ResNet, 50, False)]
    assert built['ssdlite-shapes'].bbox_head.num_classes == 5
    assert built['ssdlite'].bbox_head.num_classes == 80


def test_reference_variants_build_the_reference_layer(load_tool):
    """The ``-reference`` rows measure the straightforward DN
    (dn_mmdet/norm/reference.py), with the checkpoint names of DN."""
    from mmcv.cnn import build_norm_layer

    from dn_mmdet.norm.reference import DynamicNorm2dReference
    tool = load_tool('analysis/benchmark_norm')
    name, layer = build_norm_layer(tool.norm_cfg_of('dnb-r16-goup-reference'),
                                   32)
    assert name == 'dn' and type(layer) is DynamicNorm2dReference
    assert layer.g == 'oup' and layer.r == 16


def test_interleave_times_all_variants_in_one_worker(load_tool):
    """--interleave: one worker a case, timing every variant in turns in
    its own process (training and inference; no peak memory, which needs a
    process per variant)."""
    tool = load_tool('analysis/benchmark_norm')
    args = tool.parse_args(['--models', 'resnet18', 'layer', '--cases',
                            '2x32', '4x32', '--variants', *VARIANTS,
                            '--runs', '2', '--interleave', '--repeat', '2',
                            '--warmup', '0', '--threads', '1',
                            '--device', 'cpu'])
    jobs = tool.plan_jobs(args)
    assert [job[1:] for job in jobs[:4]] == [
        ('layer', 2, 32, 'bn,dnb-r16-goup'),
        ('layer', 4, 32, 'bn,dnb-r16-goup'),
        ('resnet18', 2, 32, 'bn,dnb-r16-goup'),
        ('resnet18', 4, 32, 'bn,dnb-r16-goup')]
    assert len(jobs) == 8 and [job[0] for job in jobs] == [0] * 4 + [1] * 4
    assert '--interleave' in tool.worker_command(args, *jobs[0][1:])
    results = tool.run_worker(args, 'resnet18', VARIANTS, 2, 32)
    assert [(r['model'], r['variant']) for r in results] == [
        ('resnet18', v) for v in VARIANTS]
    for r in results:
        assert r['train_ms'] > 0 and r['infer_ms'] > 0
        assert 'train_peak_mib' not in r and 'infer_peak_mib' not in r
        for phase in ('train', 'infer'):  # the worker's own ratio to BN
            assert r[f'{phase}_ms_x_bn'] == (r[f'{phase}_ms'] /
                                             results[0][f'{phase}_ms'])
    table = tool.format_table(tool.median_over_runs(results), args, 'in use')
    assert 'variants interleaved in one process' in table.splitlines()[0]
    row = next(line for line in table.splitlines()
               if line.startswith('| 2 | 32 | dnb-r16-goup'))
    assert row.split(' | ')[5] == '-'  # no peak memory, no ratio
