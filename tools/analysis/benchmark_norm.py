"""Benchmark BN against DN-B: a norm layer, the backbone, the whole SSDLite.

Measures side by side, each in a fresh process (so peak memory is its own):

1. ``layer``: one norm layer's forward + backward, on the input shapes of
   all 52 norm layers of MobileNetV2 at the given size (summed);
2. ``backbone``: the MobileNetV2 backbone, a training step (forward,
   backward, SGD step) and inference (``torch.no_grad``, eval mode);
3. ``detector``: the whole SSDLite of ``--config``, one training iteration
   (losses with target assignment and hard negative mining, backward, step)
   and inference of the network (backbone, neck, head; no NMS).

and prints median times, the ratio to BN and the peak memory of the timed
steps (CPU: peak RSS above the RSS before them; CUDA: max allocated). Example::

    python tools/analysis/benchmark_norm.py --batch-size 8 --threads 2 --runs 3

CPU timings are at the mercy of page faults (glibc returns large freed
blocks to the system, and whether a process re-faults its activations is
chance): ``--keep-freed-memory`` takes them out, ``--timer cpu`` with
``--threads 1`` is steadiest on a shared or virtual machine, and ``--runs``
repeats every worker and reports medians (README, "Performance").

Variants are norm configs of the backbone: ``bn``; ``dnb-r16-g1`` and
``dnb-r16-goup`` (the fast DN, the default); their ``-reference`` versions
(the straightforward DN: BN, pooling pass, SC-Module, multiply-add, all
through autograd) show what the fast path saves. ``sn`` (Switchable
Normalization, its fast path) and ``sn-plain`` (the straightforward one),
``mabn`` (MABN; ``mabn-cenconv`` also centres the backbone's conv weights,
the MABN paper's pairing) and ``gn`` (Group Normalization, 8 groups) put the
other normalisers beside them.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'ssdlite_mbv2_bn_coco.py')

VARIANTS = {
    'bn': dict(type='BN'),
    'dnb-r16-g1': dict(type='DN', r=16, g=1),
    'dnb-r16-goup': dict(type='DN', r=16, g='oup'),
    # DynamicNorm2dReference (dn_mmdet/norm/reference.py), resolved in the
    # worker by norm_cfg_of.
    'dnb-r16-g1-reference': dict(type='DNReference', r=16, g=1),
    'dnb-r16-goup-reference': dict(type='DNReference', r=16, g='oup'),
    'sn': dict(type='SN'),
    'sn-plain': dict(type='SN', impl='plain'),
    'mabn': dict(type='MABN'),
    'mabn-cenconv': dict(type='MABN'),
    'gn': dict(type='GN', num_groups=8),
}
# Variants that also change the backbone's convs (not the lone layer).
CONV_CFGS = {'mabn-cenconv': dict(type='CenConv')}
DEFAULT_VARIANTS = ['bn', 'dnb-r16-g1', 'dnb-r16-goup',
                    'dnb-r16-goup-reference']
PARTS = ('layer', 'backbone', 'detector')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark BN vs DN-B (layer, backbone, SSDLite)')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='detector config (its backbone norm is replaced)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--size', type=int, default=320, help='input side')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--device', default='auto',
                        choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--repeat', type=int, default=10,
                        help='timed iterations (the median is reported)')
    parser.add_argument(
        '--runs', type=int, default=1,
        help='fresh worker processes per (part, variant), interleaved; the '
        'table shows the median over runs (steadier on a shared or '
        'virtual machine)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS,
                        choices=sorted(VARIANTS))
    parser.add_argument('--parts', nargs='+', default=list(PARTS),
                        choices=PARTS)
    parser.add_argument(
        '--timer', default='wall', choices=['wall', 'cpu'],
        help="'wall': elapsed time; 'cpu': this process's CPU time, steady "
        'on a busy machine (use with --threads 1; CPU device only)')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument(
        '--keep-freed-memory', action='store_true',
        help='run the workers with glibc keeping freed memory '
        '(MALLOC_MMAP_MAX_=0, no trimming): no page faults for fresh '
        'activations, which otherwise dominate CPU inference')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--worker', nargs=2, metavar=('PART', 'VARIANT'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timer == 'cpu' and args.device == 'cuda':
        parser.error('--timer cpu measures CPU work; use wall on CUDA')
    if args.runs < 1 or args.repeat < 1:
        parser.error('--runs and --repeat must be >= 1')
    if args.batch_size < 2:
        parser.error('--batch-size must be >= 2: BN and DN train on batch '
                     'statistics')
    return args


# --------------------------------------------------------------------- #
# Worker side: one (part, variant) in this process.
# --------------------------------------------------------------------- #
class PeakMemory:
    """Peak memory of a block above what was in use when it started."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # Writing 5 to clear_refs resets the peak RSS (VmHWM) on Linux.
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.base = _proc_status_kib('VmRSS')
        return self

    def __exit__(self, *exc):
        import torch
        if self.device == 'cuda':
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() -
                             self.base) / 2**20
        else:
            self.peak_mib = (_proc_status_kib('VmHWM') - self.base) / 1024


def _proc_status_kib(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{key} not in /proc/self/status')


def time_median(fn, repeat, warmup, device, timer='wall'):
    import torch
    clock = time.process_time if timer == 'cpu' else time.perf_counter
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device == 'cuda':
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times) * 1e3


def build_detector(args, norm_cfg, conv_cfg=None):
    from mmengine.config import Config

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(args.config)
    cfg.model.backbone.norm_cfg = norm_cfg
    if conv_cfg is not None:
        cfg.model.backbone.conv_cfg = conv_cfg
    return MODELS.build(cfg.model)


def norm_input_shapes(args):
    """(C, H, W) of each norm layer's input in MobileNetV2 at args.size."""
    import torch
    backbone = build_detector(args, dict(type='BN')).backbone.eval()
    shapes = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, inp: shapes.append(tuple(inp[0].shape[1:])))
        for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        backbone(torch.zeros(1, 3, args.size, args.size))
    for h in hooks:
        h.remove()
    return shapes


def norm_cfg_of(variant):
    """The variant's norm config; the reference DN is given by its class
    (it is deliberately not registered)."""
    norm_cfg = dict(VARIANTS[variant])
    if norm_cfg['type'] == 'DNReference':
        from dn_mmdet.norm.reference import DynamicNorm2dReference
        norm_cfg['type'] = DynamicNorm2dReference
    return norm_cfg


def run_worker(args, part, variant):
    import torch

    import dn_mmdet  # noqa: F401
    from mmcv.cnn import build_norm_layer
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    norm_cfg = norm_cfg_of(variant)
    fmt = (torch.channels_last if args.channels_last else
           torch.contiguous_format)
    result = dict(part=part, variant=variant)

    if part == 'layer':
        layers = []
        for c, h, w in norm_input_shapes(args):
            norm = build_norm_layer(norm_cfg, c)[1].to(device).train()
            x = torch.randn(args.batch_size, c, h, w, device=device)
            x = x.to(memory_format=fmt).requires_grad_(True)
            layers.append((norm, x, torch.randn_like(x)))

        def step():
            for norm, x, grad in layers:
                norm(x).backward(grad)

        with PeakMemory(device) as mem:
            result['train_ms'] = time_median(step, args.repeat, args.warmup,
                                             device, args.timer)
        result['train_peak_mib'] = mem.peak_mib
        return result

    model = build_detector(args, norm_cfg, CONV_CFGS.get(variant)).to(device)
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    if part == 'backbone':
        net = model.backbone
        images = torch.randn(args.batch_size, 3, args.size, args.size,
                             device=device).to(memory_format=fmt)

        def train_step():
            optimizer.zero_grad()
            sum(o.float().mean() for o in net(images)).backward()
            optimizer.step()

        def infer_step():
            net(images)
    else:
        from mmdet.testing import demo_mm_inputs
        num_classes = model.bbox_head.num_classes
        data = demo_mm_inputs(
            args.batch_size, [[3, args.size, args.size]] * args.batch_size,
            num_items=[3] * args.batch_size, num_classes=num_classes)
        net = model
        batch = model.data_preprocessor(data, True)
        eval_batch = model.data_preprocessor(data, False)

        def train_step():
            optimizer.zero_grad()
            losses = model(**batch, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()
            optimizer.step()

        def infer_step():
            # The network alone: box decoding and NMS depend on how many
            # boxes the (untrained) weights score above the threshold.
            model(eval_batch['inputs'], mode='tensor')

    net.train()
    with PeakMemory(device) as mem:
        result['train_ms'] = time_median(train_step, args.repeat,
                                         args.warmup, device, args.timer)
    result['train_peak_mib'] = mem.peak_mib
    net.eval()
    with torch.no_grad(), PeakMemory(device) as mem:
        result['infer_ms'] = time_median(infer_step, args.repeat,
                                         args.warmup, device, args.timer)
    result['infer_peak_mib'] = mem.peak_mib
    return result


# --------------------------------------------------------------------- #
# Parent side: spawn the workers, print the table.
# --------------------------------------------------------------------- #
def worker_command(args, part, variant):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', part, variant,
           '--config', args.config, '--batch-size', str(args.batch_size),
           '--size', str(args.size), '--device', args.device, '--repeat',
           str(args.repeat), '--warmup', str(args.warmup), '--timer',
           args.timer]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    return cmd


def median_over_runs(runs, args):
    """One result per (part, variant): the median of each figure."""
    results = []
    for part in args.parts:
        for variant in args.variants:
            mine = [r for r in runs
                    if r['part'] == part and r['variant'] == variant]
            merged = dict(part=part, variant=variant)
            for key in mine[0]:
                if key not in merged:
                    merged[key] = statistics.median(r[key] for r in mine)
            results.append(merged)
    return results


def worker_env(args):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    if args.keep_freed_memory:
        env.update(MALLOC_MMAP_MAX_='0',
                   MALLOC_TRIM_THRESHOLD_=str(2**62))
    return env


def dn_kernel_status(args):
    """Whether DN's CPU inference kernel is in use (built here, once, so
    that no worker pays for the build)."""
    from dn_mmdet.norm.functional import fused_enabled
    from dn_mmdet.ops import dn_cpu
    if args.device != 'cpu':
        return 'ATen (not a CPU run)'
    if not fused_enabled():
        return 'off (DN_MMDET_FUSED=0)'
    if dn_cpu.load():
        return 'in use'
    return f'unavailable ({dn_cpu.error.splitlines()[0]})'


def format_table(results, args, kernel_status):
    lines = [
        f'batch {args.batch_size}, {args.size}x{args.size}, device '
        f'{args.device}, threads {args.threads or "default"}, median '
        f'{args.timer} time of {args.repeat}'
        f'{f" (median of {args.runs} runs)" if args.runs > 1 else ""}'
        f'{", glibc keeps freed memory" if args.keep_freed_memory else ""}'
        f'; DN CPU inference kernel: {kernel_status}', '',
        '| part | variant | train ms | x BN | train peak MiB | x BN | '
        'infer ms | x BN | infer peak MiB |',
        '|---|---|---|---|---|---|---|---|---|'
    ]

    def ratio(value, base):
        return f'{value / base:.2f}' if value is not None and base else '-'

    def fmt(value, digits=1):
        return '-' if value is None else f'{value:.{digits}f}'

    for part in args.parts:
        rows = [r for r in results if r['part'] == part]
        base = next((r for r in rows if r['variant'] == 'bn'), None) or {}
        for r in rows:
            lines.append(
                f"| {part} | {r['variant']} | {fmt(r.get('train_ms'))} | "
                f"{ratio(r.get('train_ms'), base.get('train_ms'))} | "
                f"{fmt(r.get('train_peak_mib'))} | "
                f"{ratio(r.get('train_peak_mib'), base.get('train_peak_mib'))}"
                f" | {fmt(r.get('infer_ms'))} | "
                f"{ratio(r.get('infer_ms'), base.get('infer_ms'))} | "
                f"{fmt(r.get('infer_peak_mib'))} |")
    return '\n'.join(lines)


def main():
    args = parse_args()
    if args.device == 'auto':
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.worker:
        print(json.dumps(run_worker(args, *args.worker)))
        return
    kernel_status = dn_kernel_status(args)
    runs = []
    jobs = [(r, p, v) for r in range(args.runs) for p in args.parts
            for v in args.variants]
    for i, (run, part, variant) in enumerate(jobs, 1):
        print(f'[{i}/{len(jobs)}] run {run + 1}: {part} {variant} ...',
              flush=True)
        proc = subprocess.run(worker_command(args, part, variant),
                              capture_output=True, text=True,
                              env=worker_env(args))
        if proc.returncode != 0:
            sys.exit(f'benchmark worker {part}/{variant} failed:\n'
                     f'{proc.stderr[-3000:]}')
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = median_over_runs(runs, args)
    table = format_table(results, args, kernel_status)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), results=results, runs=runs,
                           table=table), f, indent=2)


if __name__ == '__main__':
    main()
