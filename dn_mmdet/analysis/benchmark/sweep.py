"""The parent side of the benchmark: the plan of worker processes, running
them with an estimate of the time left, and their results.
"""

import dataclasses
import json
import statistics
import subprocess
import time
from typing import List, Optional, Tuple

from .worker import WorkerSettings, worker_command, worker_env


@dataclasses.dataclass
class Sweep:
    """A benchmark sweep.

    Args:
        models (list[str]): Keys of :data:`.cases.MODELS`, in table order.
        cases (list[tuple[int, int]]): (batch, size) of every case.
        variants (list[str]): Keys of :data:`.cases.VARIANTS`.
        runs (int): Fresh workers per case, interleaved; the tables show
            medians over them.
        keep_freed_memory (bool): See :func:`.worker.worker_env`.
        worker (WorkerSettings): How each worker measures.
        before (str, optional): Another checkout (e.g. ``git worktree add
            /tmp/dn_before main``): each worker runs again with its
            ``dn_mmdet``, right after this one's; its results have
            ``tree='before'`` (this checkout's ``tree='after'``).
    """

    models: List[str]
    cases: List[Tuple[int, int]]
    variants: List[str]
    runs: int = 1
    keep_freed_memory: bool = False
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    before: Optional[str] = None


class WorkerError(RuntimeError):
    """A worker process failed; the message names its case and ends with
    its stderr."""


def plan_jobs(sweep):
    """(run, model, batch, size, variants) of every worker, in the order
    they run: each run goes over every case, the variants of a case one
    after the other, so that BN and DN alternate and share the machine's
    state (``variants`` is one name; with ``interleave``, all of them
    joined by commas, for one worker)."""
    groups = (
        [','.join(sweep.variants)]
        if sweep.worker.interleave
        else sweep.variants
    )
    return [
        (run, model, batch, size, variants)
        for run in range(sweep.runs)
        for model in sweep.models
        for batch, size in sweep.cases
        for variants in groups
    ]


def dn_kernel_status(device):
    """Whether DN's CPU kernel is in use (built here, once, so that no
    worker pays for the build)."""
    from dn_mmdet.ops import dn_cpu, load_cpu_ops

    if device != 'cpu':
        return 'composite (not a CPU run)'
    if load_cpu_ops():
        return 'in use'
    return f'unavailable ({dn_cpu.error.splitlines()[0]})'


def format_duration(seconds):
    """``'42 s'``, ``'3 min 05 s'`` or ``'1 h 02 min'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60} min {seconds % 60:02d} s'
    return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


def estimate_left(jobs, done):
    """Seconds the jobs not yet run will take, from the ``done`` ones
    (a list of (job, seconds)): a case already measured in an earlier run
    takes as long again; any other the start-up (the fastest worker so
    far) plus the model's time per input pixel so far. None before the
    first job is done."""
    if not done:
        return None
    seen = {job[1:]: sec for job, sec in done}
    startup = min(sec for _, sec in done)

    def pixels(job):
        return job[2] * job[3] * job[3]

    def rate(model):
        mine = [
            (sec - startup) / pixels(job)
            for job, sec in done
            if job[1] == model
        ] or [(sec - startup) / pixels(job) for job, sec in done]
        return statistics.median(mine)

    return sum(
        seen.get(job[1:], startup + rate(job[1]) * pixels(job))
        for job in jobs[len(done) :]
    )


def run_sweep(sweep, log=print):
    """Runs every worker of :func:`plan_jobs`, one after the other, and
    returns their results (one dict per worker and variant, see
    :func:`.worker.run_worker`), logging progress and the time left.

    Raises:
        WorkerError: when a worker fails (naming its case, with the end
            of its stderr).
    """
    jobs = plan_jobs(sweep)
    interleaved = (
        ' (interleaved in each worker)' if sweep.worker.interleave else ''
    )
    log(
        f'{len(jobs)} workers: {len(sweep.models)} model(s) x '
        f'{len(sweep.cases)} batch x size case(s) x {len(sweep.variants)} '
        f'variant(s){interleaved} x {sweep.runs} run(s)'
    )
    trees = [('after', worker_env(sweep.keep_freed_memory), False)]
    if sweep.before:
        trees.append(
            ('before', worker_env(sweep.keep_freed_memory, sweep.before), True)
        )
    runs, done, start = [], [], time.perf_counter()
    for i, job in enumerate(jobs, 1):
        run, model, batch, size, variants = job
        left = estimate_left(jobs, done)
        eta = (
            ''
            if left is None
            else f' (elapsed {format_duration(time.perf_counter() - start)}, '
            f'about {format_duration(left)} left)'
        )
        log(
            f'[{i}/{len(jobs)}] run {run + 1}: {model} b{batch} {size} '
            f'{variants} ...{eta}'
        )
        job_start = time.perf_counter()
        for tree, env, beside in trees:
            proc = subprocess.run(
                worker_command(
                    sweep.worker, model, variants, batch, size, beside
                ),
                capture_output=True,
                text=True,
                env=env,
            )
            if proc.returncode != 0:
                raise WorkerError(
                    f'benchmark worker ({tree}) {model} b{batch} {size} '
                    f'{variants} failed:\n{proc.stderr[-3000:]}'
                )
            results = json.loads(proc.stdout.strip().splitlines()[-1])
            runs += [dict(r, tree=tree) for r in results]
        done.append((job, time.perf_counter() - job_start))
    log(
        f'all {len(jobs)} workers in '
        f'{format_duration(time.perf_counter() - start)}'
    )
    return runs
