"""dn_mmdet.utils.launch.idle_cores: the thread count tools/quickstart.sh
gives torch, from two samples of the kernel's CPU counters."""

import os
import threading

import pytest

from dn_mmdet.utils.launch import idle_cores

# /proc/stat's first line: user nice system idle iowait irq softirq steal
# guest guest_nice (clock ticks since boot, all cores together).
LINE = 'cpu  {} 0 {} {} {} 0 0 0 0 0\n'


def _sampled(tmp_path, monkeypatch, before, after):
    """idle_cores over a fake counter file that moves from ``before`` to
    ``after`` while the function sleeps."""
    stat = tmp_path / 'stat'
    stat.write_text(LINE.format(*before))
    monkeypatch.setattr(
        'dn_mmdet.utils.launch.time.sleep',
        lambda _: stat.write_text(LINE.format(*after)),
    )
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda _: {0, 1})
    return idle_cores(stat_path=str(stat))


@pytest.mark.parametrize(
    'busy, idle, expected',
    [
        (0, 200, 2),  # nothing else runs: both cores
        (100, 100, 1),  # one core busy: one thread
        (190, 10, 1),  # both busy: still one
        (40, 160, 2),  # a little background work rounds away
    ],
)
def test_the_idle_share_of_the_cores(
    tmp_path, monkeypatch, busy, idle, expected
):
    before = (1000, 500, 5000, 20)
    after = (1000 + busy, 500, 5000 + idle, 20)
    assert _sampled(tmp_path, monkeypatch, before, after) == expected


def test_iowait_counts_as_idle(tmp_path, monkeypatch):
    before = (1000, 500, 5000, 20)
    after = (1100, 500, 5000, 120)  # one core busy, one waiting on a disk
    assert _sampled(tmp_path, monkeypatch, before, after) == 1
    after = (1000, 500, 5100, 120)
    assert _sampled(tmp_path, monkeypatch, before, after) == 2


def test_without_counters_every_usable_core(tmp_path, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda _: {0, 1, 2})
    assert idle_cores(stat_path=str(tmp_path / 'missing')) == 3


def test_the_real_counters_see_a_busy_thread():
    # A busy Python thread in this process keeps a core from being idle,
    # whatever else the machine runs.
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        found = idle_cores(interval=0.3)
    finally:
        stop.set()
        spinner.join()
    cores = len(os.sched_getaffinity(0))
    assert 1 <= found <= max(1, cores - 1)
