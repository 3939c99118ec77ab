"""tools/analysis/profile_dn_layer.py: the per-layer profile at toy shapes
(the figures are measured, not asserted: only that each row is complete and
its derived columns follow from the measured ones)."""
import re

import pytest
import torch


@pytest.fixture(scope='module')
def profile_tool(load_tool):
    return load_tool('analysis/profile_dn_layer')


def test_profile_rows_and_sum(profile_tool, capsys):
    profile_tool.main(['--shapes', '2x8x3x3', '3x20x5x4', '--rounds', '1',
                       '--calls', '1'])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| 2x8x3x3')
            or line.startswith('| 3x20x5x4')]
    assert len(rows) == 2
    for line in rows:
        cells = [float(c) for c in line.strip('| ').split(' | ')[1:]]
        assert len(cells) == 11
        bn, dn, extra = cells[0], cells[1], cells[2]
        assert bn > 0 and dn > 0
        assert extra == pytest.approx(dn - bn, abs=1.0)  # printed rounded
        train_bn, train_dn, train_extra = cells[6], cells[7], cells[8]
        assert train_extra == pytest.approx(train_dn - train_bn, abs=1.0)
    assert 'CPU time of 1 thread(s), median of 1 rounds of 1' in out


def test_profile_sums_mobilenetv2_layers(profile_tool, monkeypatch, capsys):
    """--cases profiles MobileNetV2's norm input shapes (here two of them,
    at a toy size) and adds a row of their sum."""
    monkeypatch.setattr(profile_tool, 'norm_input_shapes',
                        lambda config, size: [(8, size, size),
                                              (16, size // 2, size // 2)])
    profile_tool.main(['--cases', '2x8', '--rounds', '1', '--calls', '1'])
    out = capsys.readouterr().out
    assert 'MobileNetV2 2x8: inference' in out
    assert '| 2x8x8x8 |' in out and '| 2x16x4x4 |' in out
    assert '| sum of 2 |' in out


@pytest.mark.parametrize('argv,message', [
    ([], 'give --shapes or --cases'),
    (['--shapes', '2x8x3'], "'2x8x3': expected 4 positive integers"),
    (['--cases', '2x0'], "'2x0': expected 2 positive integers"),
])
def test_profile_rejects_bad_arguments(profile_tool, capsys, argv, message):
    with pytest.raises(SystemExit):
        profile_tool.parse_args(argv)
    assert message in capsys.readouterr().err


def test_layer_timer_counts_a_layer_with_the_activation_after_it(
        profile_tool):
    """A clock that ticks once a call: each module's call lasts one tick.
    The ReLU6 right after the first BN is counted to it; the ReLU after a
    convolution to no layer; with ``replace``, a layer's replacement runs
    instead of its forward."""
    ticks = iter(range(1000))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU6(),
        torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    timer = profile_tool.NormLayerTimer(model, clock=lambda: next(ticks))
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


def test_norm_layers_leave_out_dn_parts(profile_tool):
    from dn_mmdet.norm import DynamicNorm2d
    dn = DynamicNorm2d(8)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(8), dn)
    assert profile_tool.norm_layers(model) == [model[0], dn]


def test_in_model_rows_for_every_norm_layer(profile_tool, capsys):
    """--in-model at a toy size: a row per norm layer of mmdet's
    MobileNetV2 with its SC-Module's bytes, derived columns that follow
    from the measured ones, and the whole-forward and weight-read lines."""
    profile_tool.main(['--in-model', '--models', 'mmdet-mobilenetv2',
                       '--cases', '1x32', '--rounds', '1'])
    out = capsys.readouterr().out
    assert 'mmdet-mobilenetv2), 1x32, inside inference forward' in out
    rows = [line for line in out.splitlines()
            if line.startswith('| ') and line[2].isdigit()]
    from benchmark_norm import build_model  # beside the tool
    dn_model = build_model('mmdet-mobilenetv2', dict(type='DN', r=16,
                                                     g='oup'))
    layers = profile_tool.norm_layers(dn_model)
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


def test_in_model_takes_cases_not_shapes(profile_tool, capsys):
    with pytest.raises(SystemExit):
        profile_tool.parse_args(['--in-model', '--shapes', '2x8x3x3'])
    assert '--in-model takes --cases' in capsys.readouterr().err
