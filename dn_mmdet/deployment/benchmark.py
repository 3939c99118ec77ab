"""Latency of exported detectors in onnxruntime, beside PyTorch's."""

import json
import os
import os.path as osp
import platform
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..analysis.benchmark.timing import CLOCKS, interleaved_seconds
from .export import INPUT_NAME, DetectorForExport, export_detector
from .runtime import load_session

__all__ = [
    'all_threads',
    'benchmark_latency',
    'format_latency_table',
    'machine_state',
    'write_latency_json',
]


def benchmark_latency(
    detectors: Dict[str, nn.Module],
    sizes: Sequence[int],
    threads: Sequence[int],
    work_dir: str,
    repeats: int = 30,
    warmup: int = 3,
    opset: int = 17,
    clock: str = 'wall',
) -> List[dict]:
    """Median latency of each detector's network (batch 1) in onnxruntime
    and in PyTorch, measured side by side.

    For each size every detector is exported (:func:`export_detector`, to
    ``work_dir``); for each thread count the models then run in turns, each
    round timing every detector once in each runtime
    (:func:`~dn_mmdet.analysis.benchmark.timing.interleaved_seconds`), so
    that the machine's load changes all of them alike. What is timed is the
    network, normalisation to the head's raw outputs (box decoding and NMS
    are PyTorch's in both). PyTorch runs the detector as it is (DN through
    its C++ op on the CPU).

    Args:
        detectors (dict[str, nn.Module]): Detectors (eval) by name; the
            last is the baseline of the ratios.
        sizes (Sequence[int]): Square input sizes.
        threads (Sequence[int]): Thread counts (onnxruntime's
            ``intra_op_num_threads`` and ``torch.set_num_threads``).
        work_dir (str): Where the ONNX files go.
        repeats (int): Timed rounds. Default: 30.
        warmup (int): Untimed calls of each first. Default: 3.
        opset (int): ONNX opset. Default: 17.
        clock (str): ``'wall'`` (elapsed time: the latency) or ``'cpu'``
            (the process's CPU time, all its threads summed: steadier on a
            busy machine, the latency only with one thread).
            Default: 'wall'.

    Returns:
        list[dict]: Per size, thread count and detector: ``size``,
        ``threads``, ``name``, ``onnxruntime_ms`` and ``pytorch_ms``
        (medians), and ``onnxruntime_ratio`` and ``pytorch_ratio`` (the
        medians over the baseline's).
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {list(CLOCKS)}, got {clock!r}')
    names = list(detectors)
    torch_threads = torch.get_num_threads()
    rows = []
    try:
        for size in sizes:
            files = {}
            for name in names:
                files[name] = osp.join(work_dir, f'{_slug(name)}_{size}.onnx')
                export_detector(
                    detectors[name], files[name], (size, size), opset=opset
                )
            image = torch.rand(
                1, 3, size, size, generator=torch.Generator().manual_seed(0)
            )
            image = image * 255
            for count in threads:
                rows += _measure(
                    detectors, files, image, count, repeats, warmup, clock
                )
    finally:
        torch.set_num_threads(torch_threads)
    return rows


def _measure(detectors, files, image, threads, repeats, warmup, clock):
    names = list(detectors)
    torch.set_num_threads(threads)
    sessions = {name: load_session(files[name], threads) for name in names}
    networks = {
        name: DetectorForExport(detectors[name]).eval() for name in names
    }
    feed = {INPUT_NAME: image.numpy()}
    calls = {}
    for name in names:
        calls[(name, 'onnxruntime')] = lambda s=sessions[name]: s.run(
            None, feed
        )
        calls[(name, 'pytorch')] = lambda n=networks[name]: n(image)
    with torch.no_grad():
        seconds = interleaved_seconds(calls, repeats, warmup, clock=clock)
    base = names[-1]
    rows = []
    for name in names:
        row = dict(size=image.shape[-1], threads=threads, name=name)
        for runtime in ('onnxruntime', 'pytorch'):
            row[f'{runtime}_ms'] = seconds[(name, runtime)] * 1e3
            row[f'{runtime}_ratio'] = (
                seconds[(name, runtime)] / seconds[(base, runtime)]
            )
        rows.append(row)
    return rows


def _slug(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_' else '_' for c in name)


def format_latency_table(rows: List[dict]) -> str:
    """:func:`benchmark_latency`'s rows as a Markdown table."""
    lines = [
        '| size | threads | model | onnxruntime ms | ratio | PyTorch ms '
        '| ratio |',
        '|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["size"]} | {r["threads"]} | {r["name"]} | '
            f'{r["onnxruntime_ms"]:.2f} | {r["onnxruntime_ratio"]:.2f} | '
            f'{r["pytorch_ms"]:.2f} | {r["pytorch_ratio"]:.2f} |'
        )
    return '\n'.join(lines)


def all_threads() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_state() -> dict:
    """What a latency depends on besides the model: the CPUs this process
    may use, the load average (1, 5, 15 minutes; other processes' demand
    for them), the platform and the runtimes' versions."""
    import onnxruntime

    return dict(
        cpus=all_threads(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        machine=platform.machine(),
        processor=platform.processor() or None,
        python=platform.python_version(),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
    )


def write_latency_json(
    path: str,
    rows: List[dict],
    before: dict,
    after: Optional[dict] = None,
    **settings,
) -> dict:
    """Write :func:`benchmark_latency`'s rows with the machine's state
    before and after the measurement and the settings (e.g. ``configs``,
    ``repeats``) as JSON, whole or not at all.

    Returns:
        dict: What was written.
    """
    from ..utils import atomic_write

    report = dict(
        settings=settings,
        machine_before=before,
        machine_after=after or machine_state(),
        rows=rows,
    )
    text = json.dumps(report, indent=2) + '\n'
    atomic_write(path, text.encode())
    return report
