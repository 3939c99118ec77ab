"""ExpectedDurationHook: one early log line with the run's expected
duration, its iteration count and the measured time per iteration."""

import re

import pytest

from dn_mmdet.engine.hooks import ExpectedDurationHook

LINE = re.compile(
    r'expected duration: ~([\d.]+) (s|min) for (\d+) '
    r'iterations at ([\d.e+-]+) s/iter(.*), about ([\d.]+) '
    r'(s|min) left'
)


def _lines(tmp_path, runner):
    log = tmp_path / runner.timestamp / f'{runner.timestamp}.log'
    return [m for m in map(LINE.search, log.read_text().splitlines()) if m]


def test_logs_the_expected_duration_once_after_the_measured_iterations(
    tmp_path, toy
):
    # 8 samples in batches of 4, 3 epochs: 6 iterations.
    runner = toy.build_runner(
        tmp_path,
        max_epochs=3,
        validate=True,
        custom_hooks=[
            dict(type='ExpectedDurationHook', skip_iters=1, measure_iters=2)
        ],
    )
    runner.train()
    lines = _lines(tmp_path, runner)
    assert len(lines) == 1
    total, unit, iters, per_iter, validation, left, _ = lines[0].groups()
    assert int(iters) == runner.max_iters == 6
    assert float(per_iter) > 0
    # The whole run at that speed, to the 0.1 s the line rounds to (a fast
    # machine's 6 toy iterations take less than 0.05 s).
    assert unit == 's'
    assert abs(float(total) - 6 * float(per_iter)) <= 0.05 + 1e-9
    assert validation == ' (+ validation every 1 epochs)'
    # Logged after iteration 3 of 6: 3 left.
    assert float(left) >= 0


def test_a_run_shorter_than_the_window_logs_at_its_last_iteration(
    tmp_path, toy
):
    runner = toy.build_runner(
        tmp_path,
        max_epochs=1,
        custom_hooks=[
            dict(type='ExpectedDurationHook', skip_iters=1, measure_iters=50)
        ],
    )
    runner.train()
    lines = _lines(tmp_path, runner)
    assert len(lines) == 1
    assert int(lines[0].group(3)) == 2
    assert lines[0].group(5) == ''  # no validation loop
    assert lines[0].group(6, 7) == ('0.0', 's')


def test_no_line_when_every_iteration_is_warm_up(tmp_path, toy):
    runner = toy.build_runner(
        tmp_path,
        max_epochs=1,
        custom_hooks=[dict(type='ExpectedDurationHook', skip_iters=2)],
    )
    runner.train()
    assert _lines(tmp_path, runner) == []


@pytest.mark.parametrize(
    'kwargs', [dict(skip_iters=-1), dict(measure_iters=0), dict(max_seconds=0)]
)
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match='ExpectedDurationHook needs'):
        ExpectedDurationHook(**kwargs)


def test_the_shapes_configs_log_their_expected_duration(shapes_config):
    from mmengine.config import Config

    for kind in ('bn', 'dn', 'sn', 'mabn-cenconv'):
        cfg = Config.fromfile(shapes_config(kind))
        assert cfg.default_hooks.expected_duration == dict(
            type='ExpectedDurationHook'
        )
