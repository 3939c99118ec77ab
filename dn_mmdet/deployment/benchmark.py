"""Latency of exported detectors in onnxruntime, beside PyTorch's."""

import os
import os.path as osp
import statistics
import time
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from .export import INPUT_NAME, DetectorForExport, export_detector
from .runtime import load_session

__all__ = ['all_threads', 'benchmark_latency', 'format_latency_table']


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def benchmark_latency(
    detectors: Dict[str, nn.Module],
    sizes: Sequence[int],
    threads: Sequence[int],
    work_dir: str,
    repeats: int = 30,
    warmup: int = 3,
    opset: int = 17,
) -> List[dict]:
    """Median latency of each detector's network (batch 1) in onnxruntime
    and in PyTorch, measured side by side.

    For each size every detector is exported (:func:`export_detector`, to
    ``work_dir``); for each thread count the models then run in rounds, each
    round timing every detector once in each runtime, in an order that
    alternates from round to round, so that the machine's load drifts over
    all of them alike. What is timed is the network, normalisation to the
    head's raw outputs (box decoding and NMS are PyTorch's in both).

    Args:
        detectors (dict[str, nn.Module]): Detectors (eval) by name; the
            last is the baseline of the ratios.
        sizes (Sequence[int]): Square input sizes.
        threads (Sequence[int]): Thread counts (onnxruntime's
            ``intra_op_num_threads`` and ``torch.set_num_threads``).
        work_dir (str): Where the ONNX files go.
        repeats (int): Timed rounds. Default: 30.
        warmup (int): Untimed rounds first. Default: 3.
        opset (int): ONNX opset. Default: 17.

    Returns:
        list[dict]: Per size, thread count and detector: ``size``,
        ``threads``, ``name``, ``onnxruntime_ms`` and ``pytorch_ms``
        (medians), and ``onnxruntime_ratio`` and ``pytorch_ratio`` (the
        medians over the baseline's).
    """
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
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
                    detectors, files, image, count, repeats, warmup
                )
    finally:
        torch.set_num_threads(torch_threads)
    return rows


def _measure(detectors, files, image, threads, repeats, warmup):
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
    keys = list(calls)
    times = {key: [] for key in keys}
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            order = keys if round_ % 2 == 0 else keys[::-1]
            for key in order:
                ms = _timed(calls[key])
                if round_ >= warmup:
                    times[key].append(ms)
    medians = {key: statistics.median(v) for key, v in times.items()}
    base = names[-1]
    rows = []
    for name in names:
        row = dict(size=image.shape[-1], threads=threads, name=name)
        for runtime in ('onnxruntime', 'pytorch'):
            ms = medians[(name, runtime)]
            row[f'{runtime}_ms'] = ms
            row[f'{runtime}_ratio'] = ms / medians[(base, runtime)]
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
