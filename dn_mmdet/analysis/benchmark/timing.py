"""Timing and peak memory of steps run in one process.

The functions are timed in turns, one call of each a round, so that all
of them see the same machine state (a shared machine's slow second hits
all of them alike). ``torch.utils.benchmark.Timer`` times one statement at
a time, runs warm-up calls before every measurement and sets torch's
thread count for it (one by default), so it cannot give these paired
rounds.
"""

import statistics
import time

#: Clocks of ``timer``: elapsed time, or this process's CPU time (steady
#: on a busy machine with one thread).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def interleaved_seconds(
    fns, rounds, warmup=1, calls=1, clock='wall', device='cpu'
):
    """``{name: median seconds of one call}`` of the functions, timed in
    turns.

    Args:
        fns (dict[str, callable]): Functions of no arguments.
        rounds (int): Rounds (>= 1); the median over them is returned.
        warmup (int): Untimed calls of each function first.
        calls (int): Calls of a function per round (its time is their
            mean).
        clock (str): A key of :data:`CLOCKS`.
        device (str): ``'cuda'``: synchronised before and after each
            function's calls, so that their kernels are counted.
    """
    if rounds < 1 or calls < 1:
        raise ValueError(
            f'rounds and calls must be >= 1, got {rounds} and {calls}'
        )
    now = CLOCKS[clock]
    sync = _cuda_sync if device == 'cuda' else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = now()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((now() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def _cuda_sync():
    import torch

    torch.cuda.synchronize()


def time_interleaved(fns, repeat, warmup, device, timer='wall'):
    """``{name: median ms}`` of the functions, one call each a round (see
    :func:`interleaved_seconds`)."""
    seconds = interleaved_seconds(
        fns, repeat, warmup, clock=timer, device=device
    )
    return {name: s * 1e3 for name, s in seconds.items()}


def time_median(fn, repeat, warmup, device, timer='wall'):
    """The median ms of ``fn`` alone."""
    return time_interleaved({'fn': fn}, repeat, warmup, device, timer)['fn']


class PeakMemory:
    """Peak memory (MiB, ``peak_mib``) of a block above what was in use
    when it started.

    CPU: the peak resident set size (``VmHWM`` of ``/proc/self/status``,
    reset on entry by writing 5 to ``/proc/self/clear_refs``; Linux only)
    above the RSS on entry. CUDA: ``torch.cuda.max_memory_allocated``
    above the memory allocated on entry.

    Args:
        device (str): ``'cpu'`` or ``'cuda'``.
    """

    def __init__(self, device):
        self.device = device
        self.peak_mib = None

    def __enter__(self):
        import torch

        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.base = proc_status_kib('VmRSS')
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == 'cuda':
            torch.cuda.synchronize()
            self.peak_mib = (
                torch.cuda.max_memory_allocated() - self.base
            ) / 2**20
        else:
            self.peak_mib = (proc_status_kib('VmHWM') - self.base) / 1024


def proc_status_kib(key):
    """The KiB of ``key`` (e.g. ``'VmRSS'``) in ``/proc/self/status``."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{key} not in /proc/self/status')
