"""Argument and input errors of tools/analysis/get_flops.py and
plot_map.py: usage errors and one-line messages, not tracebacks."""

import runpy

import pytest
from helpers import REPO

CONFIG = str(
    REPO / 'configs/ssdlite' / 'ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
)


def _cli(name):
    """The tool's functions, without running it."""
    return runpy.run_path(str(REPO / 'tools/analysis' / f'{name}.py'))


@pytest.mark.parametrize(
    'argv, message',
    [
        # were a ValueError traceback, and the model's on a zero or
        # negative size
        (
            [CONFIG, '--shape', '320', '320', '3'],
            '--shape takes 1 or 2 values (height [width]), got 3',
        ),
        (
            [CONFIG, '--shape', '0'],
            "argument --shape: expected a whole number >= 1, got '0'",
        ),
        (['no/such.py'], 'config no/such.py: no such file'),
    ],
)
def test_get_flops_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        _cli('get_flops')['parse_args'](argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_plot_map_names_a_bad_run_without_a_traceback(tmp_path):
    """A run that is not there, or a log that is not json lines: the
    message (naming the run or file and line) is the exit status, as
    sys.exit prints it; was a traceback."""
    main = _cli('plot_map')['main']
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(SystemExit) as exit:
        main([missing, '--out', str(tmp_path / 'map.png')])
    assert exit.value.code == (
        f'plot_map: run "{missing}" is neither a log file nor a directory'
    )
    log = tmp_path / 'scalars.json'
    log.write_text('{"coco/bbox_mAP": 0.5, "step": 1}\nnot json\n')
    with pytest.raises(SystemExit) as exit:
        main([str(log), '--out', str(tmp_path / 'map.png')])
    assert exit.value.code.startswith(f'plot_map: {log}:2 is not json')
    assert not (tmp_path / 'map.png').exists()
