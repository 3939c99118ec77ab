"""The DN layer profile: ``tools/analysis/profile_dn_layer.py`` in a real
process, its argument checks, and the package's profile
(dn_mmdet.analysis.benchmark.layer_profile, .in_model) at toy shapes (the
figures are measured, not asserted: only that each row is complete and
its derived columns follow from the measured ones)."""

import re
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dn_mmdet.analysis.benchmark import build_model, in_model, layer_profile

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools/analysis/profile_dn_layer.py'


@pytest.fixture(scope='module')
def cli():
    """The CLI's functions (its ``parse_args``), without running it."""
    return SimpleNamespace(**runpy.run_path(str(TOOL)))


def _cells(line):
    return [float(c) for c in line.strip('| ').split(' | ')[1:]]


@pytest.mark.slow
def test_profile_cli_prints_a_row_per_shape(tool_env):
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            '--shapes',
            '2x8x3x3',
            '3x20x5x4',
            '--rounds',
            '1',
            '--calls',
            '1',
        ],
        capture_output=True,
        text=True,
        env=tool_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = [
        line
        for line in out.splitlines()
        if line.startswith('| 2x8x3x3') or line.startswith('| 3x20x5x4')
    ]
    assert len(rows) == 2
    for line in rows:
        cells = _cells(line)
        assert len(cells) == 11
        bn, dn, extra = cells[0], cells[1], cells[2]
        assert bn > 0 and dn > 0
        assert extra == pytest.approx(dn - bn, abs=1.0)  # printed rounded
        train_bn, train_dn, train_extra = cells[6], cells[7], cells[8]
        assert train_extra == pytest.approx(train_dn - train_bn, abs=1.0)
    assert 'CPU time of 1 thread(s), median of 1 rounds of 1' in out


def test_profile_table_sums_its_shapes():
    """Several shapes (e.g. MobileNetV2's norm inputs of --cases) get a
    row of their sum."""
    lines = list(
        layer_profile.profile_table(
            'MobileNetV2 2x8', [(2, 8, 8, 8), (2, 16, 4, 4)], 1, 1, 1
        )
    )
    assert lines[0].startswith('\nMobileNetV2 2x8: inference')
    assert lines[1] == layer_profile.HEADER
    rows = [line for line in lines if line.startswith('| 2x')]
    assert [r.split(' | ')[0] for r in rows] == ['| 2x8x8x8', '| 2x16x4x4']
    assert lines[-1].startswith('| sum of 2 |')
    total = _cells(lines[-1])
    # the sum of the measured columns (each printed rounded)
    for column in (0, 1, 5, 6, 7, 10):
        assert total[column] == pytest.approx(
            sum(_cells(r)[column] for r in rows), abs=1.0
        )


@pytest.mark.parametrize(
    'argv,message',
    [
        ([], 'give --shapes or --cases'),
        (['--shapes', '2x8x3'], "'2x8x3': expected 4 positive integers"),
        (['--cases', '2x0'], "'2x0': expected 2 positive integers"),
        (['--in-model', '--shapes', '2x8x3x3'], '--in-model takes --cases'),
        # were tracebacks (torch.set_num_threads, median of no rounds)
        (
            ['--cases', '2x8', '--threads', '0'],
            "argument --threads: expected a whole number >= 1, got '0'",
        ),
        (
            ['--cases', '2x8', '--rounds', '0'],
            "argument --rounds: expected a whole number >= 1, got '0'",
        ),
        (
            ['--cases', '2x8', '--calls', '-1'],
            "argument --calls: expected a whole number >= 1, got '-1'",
        ),
    ],
)
def test_profile_rejects_bad_arguments(cli, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.parse_args(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_layer_timer_counts_a_layer_with_the_activation_after_it():
    """A clock that ticks once a call: each module's call lasts one tick.
    The ReLU6 right after the first BN is counted to it; the ReLU after a
    convolution to no layer; with ``replace``, a layer's replacement runs
    instead of its forward."""
    ticks = iter(range(1000))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.ReLU(),
        torch.nn.BatchNorm2d(4),
    )
    timer = in_model.NormLayerTimer(model, clock=lambda: next(ticks))
    assert timer.layers == [model[1], model[5]]
    x = torch.randn(2, 3, 5, 5)
    model(x)
    assert timer.seconds == [2, 1]
    assert timer.input_shapes == [(2, 4, 5, 5)] * 2
    timer.reset()
    calls = []
    timer.replacements = [None, lambda t: calls.append(t) or t]
    timer.replace = True
    model(x)
    assert len(calls) == 1 and timer.seconds == [2, 1]


def test_layer_timer_counts_an_unfused_dn_layer_once():
    """DN's ``forward`` calls its ``forward_clamped``, both wrapped: the
    layer's call lasts one tick, not the outer call's two plus the
    inner's one (before: 3, DN's Python share overstated by its op)."""
    from dn_mmdet.norm import DynamicNorm2d

    ticks = iter(range(1000))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), DynamicNorm2d(4))
    timer = in_model.NormLayerTimer(model, clock=lambda: next(ticks))
    model(torch.randn(2, 3, 5, 5))
    assert timer.seconds == [1]


def test_norm_layers_leave_out_dn_parts():
    from dn_mmdet.norm import DynamicNorm2d

    dn = DynamicNorm2d(8)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(8), dn)
    assert in_model.norm_layers(model) == [model[0], dn]


def test_in_model_rows_for_every_norm_layer():
    """In-model at a toy size: a row per norm layer of mmdet's MobileNetV2
    with its SC-Module's bytes, derived columns that follow from the
    measured ones, and the whole-forward and weight-read lines."""
    rows, totals, sc_tensors = in_model.profile_in_model(
        'mmdet-mobilenetv2', 1, 32, rounds=1
    )
    lines = in_model.format_in_model(
        'title', rows, totals, in_model.read_ms(sc_tensors, 1), 1, 1
    )
    out = '\n'.join(lines)
    assert out.startswith('\ntitle, inside inference forward passes')
    rows = [
        line for line in lines if line.startswith('| ') and line[2].isdigit()
    ]
    dn_model = build_model('mmdet-mobilenetv2', dict(type='DN', r=16, g='oup'))
    layers = in_model.norm_layers(dn_model)
    assert len(rows) == len(layers) == 52
    for line, layer in zip(rows, layers):
        cells = line.strip('| ').split(' | ')
        assert re.fullmatch(r'1x\d+x\d+x\d+', cells[1])
        sc_bytes = sum(p.numel() * 4 for p in layer.sc.parameters())
        assert float(cells[2]) == pytest.approx(sc_bytes / 1024, abs=0.05)
        bn, dn, op, extra, python, op_extra = map(float, cells[3:])
        assert min(bn, dn, op) > 0
        assert extra == pytest.approx(dn - bn, abs=1.5)
        assert python == pytest.approx(dn - op, abs=1.5)
        assert op_extra == pytest.approx(op - bn, abs=1.5)
    assert '| all 52 (median of the sums) |' in out
    assert 'Whole forward (ms): BN ' in out
    assert "The SC-Modules' weights, " in out
