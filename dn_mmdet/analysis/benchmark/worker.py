"""One benchmark case in this process: the worker side of the sweep.

The sweep (:mod:`.sweep`) starts a fresh process per case, so that peak
memory is that case's own::

    python -m dn_mmdet.analysis.benchmark SETTINGS MODEL VARIANTS BATCH SIZE

``SETTINGS`` is :class:`WorkerSettings` as JSON, ``VARIANTS`` one variant
or several joined by commas (``interleave``); the last line the worker
prints is its results, a JSON list of one dict per variant.
"""

import dataclasses
import json
import os
import os.path as osp
import sys
from typing import Optional

from .cases import DEFAULT_CONFIG, build_steps
from .timing import PeakMemory, time_interleaved, time_median

#: Suffix of a worker's own ratio to BN (``train_ms_x_bn``): with
#: ``interleave`` a worker times BN's steps beside the others', and the
#: median over runs of these paired ratios leaves out what differs between
#: processes (a worker whose machine ran 30% slower throughout moves the
#: medians of BN's and DN's times apart, not its own ratio).
PAIRED = '_x_bn'


@dataclasses.dataclass
class WorkerSettings:
    """How a worker measures its case.

    Args:
        config (str): Detector config of ``mobilenetv2dn``, ``ssdlite``
            and the lone layers' shapes.
        device (str): ``'cpu'`` or ``'cuda'`` (not ``'auto'``).
        repeat (int): Timed steps; the median is reported.
        warmup (int): Untimed steps first.
        timer (str): ``'wall'`` or ``'cpu'`` (see
            :data:`.timing.CLOCKS`).
        threads (int, optional): torch's CPU threads (None: its default).
        channels_last (bool): Channels-last models and inputs.
        interleave (bool): All variants' steps alternating in one process
            (their ratios to BN paired; no peak memory).
        compile (bool): Models run through ``torch.compile``.
    """

    config: str = DEFAULT_CONFIG
    device: str = 'cpu'
    repeat: int = 10
    warmup: int = 3
    timer: str = 'wall'
    threads: Optional[int] = None
    channels_last: bool = False
    interleave: bool = False
    compile: bool = False


def run_worker(settings, model_name, variants, batch, size):
    """The results (one dict per variant: model, variant, batch, size,
    ``{train,infer}_ms`` and ``{train,infer}_peak_mib``) of one case: each
    variant alone with its peak memory, or with ``settings.interleave``
    all of them in this process, their timed steps alternating (times and
    the paired ratios ``*_ms_x_bn`` where BN is among them; no peak
    memory)."""
    import torch

    import dn_mmdet  # noqa: F401  (registers DN, SN, MABN)

    if settings.threads:
        torch.set_num_threads(settings.threads)
    steps = {
        v: build_steps(
            model_name,
            v,
            batch,
            size,
            settings.config,
            settings.device,
            settings.channels_last,
            settings.compile,
        )
        for v in variants
    }
    results = {
        v: dict(model=model_name, variant=v, batch=batch, size=size)
        for v in variants
    }
    phases = [('train', torch.enable_grad, True)]
    if model_name != 'layer':
        phases.append(('infer', torch.no_grad, False))
    for phase, grad_mode, training in phases:
        fns = {}
        for v, step in steps.items():
            step.set_mode(training)
            fns[v] = step.train_step if training else step.infer_step
        with grad_mode():
            if settings.interleave:
                times = time_interleaved(
                    fns,
                    settings.repeat,
                    settings.warmup,
                    settings.device,
                    settings.timer,
                )
                for v in variants:
                    results[v][f'{phase}_ms'] = times[v]
                    if 'bn' in times:  # paired: BN's steps ran beside these
                        results[v][f'{phase}_ms{PAIRED}'] = (
                            times[v] / times['bn']
                        )
                continue
            for v in variants:
                with PeakMemory(settings.device) as mem:
                    results[v][f'{phase}_ms'] = time_median(
                        fns[v],
                        settings.repeat,
                        settings.warmup,
                        settings.device,
                        settings.timer,
                    )
                results[v][f'{phase}_peak_mib'] = mem.peak_mib
    return [results[v] for v in variants]


#: A worker of another ``dn_mmdet`` (``worker_env(root=...)``): this
#: package's code, loaded from its files under another name, measures the
#: ``dn_mmdet`` first on ``PYTHONPATH``.
_LAUNCH_BESIDE = (
    'import importlib.util, sys; '
    'spec = importlib.util.spec_from_file_location("dn_benchmark", {init!r}, '
    'submodule_search_locations=[{here!r}]); '
    'package = importlib.util.module_from_spec(spec); '
    'sys.modules["dn_benchmark"] = package; spec.loader.exec_module(package); '
    'from dn_benchmark.worker import main; main(sys.argv[1:])'
)


def worker_command(settings, model, variants, batch, size, beside=False):
    """The command line of a worker process: this package's ``__main__``
    run by this Python, or with ``beside`` this package's files under
    another name (for a worker whose ``dn_mmdet`` is another checkout's,
    which may not have this package)."""
    args = [
        json.dumps(dataclasses.asdict(settings)),
        model,
        variants,
        str(batch),
        str(size),
    ]
    if not beside:
        return [sys.executable, '-m', __package__] + args
    here = osp.dirname(osp.abspath(__file__))
    launch = _LAUNCH_BESIDE.format(
        init=osp.join(here, '__init__.py'), here=here
    )
    return [sys.executable, '-c', launch] + args


def worker_env(keep_freed_memory=False, root=None):
    """The environment of a worker process: this one's, warnings off, the
    ``dn_mmdet`` this process imported first on ``PYTHONPATH`` (the worker
    measures the same code; ``root``: another checkout's instead), and with
    ``keep_freed_memory`` glibc keeping freed memory
    (``MALLOC_MMAP_MAX_=0``, no trimming: no page faults for fresh
    activations, which otherwise dominate CPU inference)."""
    import dn_mmdet

    root = root or osp.dirname(osp.dirname(osp.abspath(dn_mmdet.__file__)))
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    env['PYTHONPATH'] = os.pathsep.join(
        [root] + [p for p in [env.get('PYTHONPATH')] if p]
    )
    if keep_freed_memory:
        env.update(MALLOC_MMAP_MAX_='0', MALLOC_TRIM_THRESHOLD_=str(2**62))
    return env


def main(argv=None):
    """The worker process: runs the case of ``argv`` (see the module's
    docstring) and prints its results as the last line."""
    settings, model, variants, batch, size = argv or sys.argv[1:]
    settings = WorkerSettings(**json.loads(settings))
    print(
        json.dumps(
            run_worker(
                settings, model, variants.split(','), int(batch), int(size)
            )
        )
    )


if __name__ == '__main__':
    main()
