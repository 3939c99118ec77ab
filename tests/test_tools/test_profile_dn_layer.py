"""tools/analysis/profile_dn_layer.py: the per-layer profile at toy shapes
(the figures are measured, not asserted: only that each row is complete and
its derived columns follow from the measured ones)."""
import pytest


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
