"""Benchmark BN against DN-B in the models users run, over a sweep of sizes.

Measures side by side, each (model, batch, size, variant) in a fresh process
(so that peak memory is its own), ``--runs`` times, interleaved; or, with
``--interleave``, all variants of a case in one process, their timed steps
alternating (steadier ratios; no peak memory):

* ``layer``: one norm layer's forward + backward, on the input shapes of
  all 52 norm layers of MobileNetV2 at the given size (summed);
* backbones, a training step (forward, backward, SGD step) and inference
  (``torch.no_grad``, eval mode), with the variant as their ``norm_cfg``
  (``dict(type='DN', r=16, g='oup')`` etc., built through mmengine's
  registry as in a user's config):

  - ``mobilenetv2dn``: the project's ``MobileNetV2DN``, the backbone of
    ``--config`` (FNA's taps);
  - ``mmdet-mobilenetv2``: mmdet's ``MobileNetV2`` (``out_indices=(4, 7)``);
  - ``resnet18``, ``resnet50``: mmdet's ``ResNet`` (all four stages out,
    ``norm_eval=False``, nothing frozen);

* detectors, one training iteration (losses with target assignment and hard
  negative mining, backward, step) and inference of the network (backbone,
  neck, head; no NMS), with the variant in the backbone:

  - ``ssdlite``: the SSDLite of ``--config`` (default: the paper's);
  - ``ssdlite-shapes``: the shapes detector of the main job
    (``configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py``,
    5 classes, anchors for 128 px).

For every model it prints a table (rows: batch x size x variant) of median
times, the ratio to BN (with ``--interleave``: the median over runs of each
worker's own ratio, BN's steps timed beside the variant's) and the peak
memory of the timed steps (CPU: peak RSS above the RSS before them; CUDA:
``max_memory_allocated`` above the memory in use before them, timed with
``torch.cuda.synchronize``), then a summary line per model: the worst
(largest) DN/BN ratio of training time, inference time and training peak
memory over the sweep, with the case where it occurs.
Examples::

    # the sweep (CPU time of one thread: steady on a shared machine)
    python tools/analysis/benchmark_norm.py --models mmdet-mobilenetv2 \
        resnet18 resnet50 mobilenetv2dn ssdlite --batch-sizes 2 4 8 16 \
        --sizes 128 224 320 640 --variants bn dnb-r16-goup \
        --timer cpu --threads 1 --runs 3 --repeat 5 --keep-freed-memory
    # the same in wall time with all threads (torch's default)
    python tools/analysis/benchmark_norm.py ... --timer wall
    # the former single-size run (--parts and --batch-size/--size still work)
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
other normalisers beside them. The summary's first line per model is the
worst over the DN variants (``dnb-*``, not the references); every other
non-BN variant gets a line of its own.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'ssdlite_mbv2_bn_coco.py')
SHAPES_CONFIG = osp.join(
    ROOT, 'configs', 'ssdlite',
    'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py')

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
# The fast DN variants: the summary's first line per model.
DN_VARIANTS = ('dnb-r16-g1', 'dnb-r16-goup')

# What --models measures, in the order of the tables.
MODELS = {
    'layer': 'lone norm layers at the input shapes of MobileNetV2\'s 52',
    'mobilenetv2dn': 'MobileNetV2DN, the backbone of --config',
    'mmdet-mobilenetv2': "mmdet's MobileNetV2 backbone, out_indices (4, 7)",
    'resnet18': "mmdet's ResNet-18 backbone, 4 stages out",
    'resnet50': "mmdet's ResNet-50 backbone, 4 stages out",
    'ssdlite': 'the SSDLite of --config, norm in the backbone',
    'ssdlite-shapes': 'the shapes SSDLite (the main job), norm in the '
    'backbone',
}
# mmdet backbones as a user's config gives them (norm_cfg added).
BACKBONES = {
    'mmdet-mobilenetv2': dict(type='mmdet.MobileNetV2', out_indices=(4, 7)),
    'resnet18': dict(type='mmdet.ResNet', depth=18, out_indices=(0, 1, 2, 3),
                     norm_eval=False, frozen_stages=-1),
    'resnet50': dict(type='mmdet.ResNet', depth=50, out_indices=(0, 1, 2, 3),
                     norm_eval=False, frozen_stages=-1),
}
DETECTORS = ('ssdlite', 'ssdlite-shapes')
# The former --parts, kept as aliases of models.
PARTS = {'layer': 'layer', 'backbone': 'mobilenetv2dn', 'detector': 'ssdlite'}
DEFAULT_MODELS = ['layer', 'mobilenetv2dn', 'ssdlite']
MIN_SIZE = 32  # the backbones' output stride


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark BN vs DN-B (norm layers, mmdet and project '
        'backbones, SSDLite) over batch sizes and input sizes')
    parser.add_argument(
        '--models', nargs='+', choices=list(MODELS),
        help='what to measure: ' + '; '.join(
            f'{k}: {v}' for k, v in MODELS.items()) +
        f' (default: {" ".join(DEFAULT_MODELS)})')
    parser.add_argument(
        '--parts', nargs='+', choices=list(PARTS),
        help='the former names, added to --models: layer, backbone '
        '(= mobilenetv2dn), detector (= ssdlite)')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='detector config of mobilenetv2dn and ssdlite '
                        '(its backbone norm is replaced)')
    parser.add_argument('--batch-sizes', '--batch-size', dest='batch_sizes',
                        nargs='+', type=int, default=[8],
                        help='batch sizes of the sweep (>= 2)')
    parser.add_argument('--sizes', '--size', dest='sizes', nargs='+',
                        type=int, default=[320],
                        help=f'input sides of the sweep (>= {MIN_SIZE})')
    parser.add_argument(
        '--cases', nargs='+', metavar='BATCHxSIZE',
        help='explicit (batch, size) cases, e.g. 2x128 4x224 8x320, in '
        'place of the product of --batch-sizes and --sizes')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--device', default='auto',
                        choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--repeat', type=int, default=10,
                        help='timed iterations (the median is reported)')
    parser.add_argument(
        '--runs', type=int, default=1,
        help='fresh worker processes per case (model, batch, size, '
        'variant), interleaved; the tables show the median over runs '
        '(steadier on a shared or virtual machine), and with --interleave '
        'the median of each worker\'s own ratio to BN')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS,
                        choices=sorted(VARIANTS))
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
    parser.add_argument(
        '--interleave', action='store_true',
        help='time all variants of a case in one worker process, their '
        'steps alternating (ratios to BN free of the 10-30%% that fresh '
        'processes differ by on a shared machine); peak memory is then not '
        'measured (it needs a process per variant)')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--worker', nargs=4,
                        metavar=('MODEL', 'VARIANT', 'BATCH', 'SIZE'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timer == 'cpu' and args.device == 'cuda':
        parser.error('--timer cpu measures CPU work; use wall on CUDA')
    if args.runs < 1 or args.repeat < 1:
        parser.error('--runs and --repeat must be >= 1')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0')
    if args.cases:
        try:
            cases = [tuple(int(v) for v in case.lower().split('x'))
                     for case in args.cases]
        except ValueError:
            cases = [()]
        if any(len(case) != 2 for case in cases):
            parser.error(f'--cases must look like 4x224 (batch x size), got '
                         f'{" ".join(args.cases)}')
        args.batch_sizes = [b for b, _ in cases]
        args.sizes = [s for _, s in cases]
    else:
        cases = [(b, s) for b in args.batch_sizes for s in args.sizes]
    small = [b for b in args.batch_sizes if b < 2]
    if small:
        parser.error(f'--batch-sizes must be >= 2 (got {small[0]}): BN and '
                     'DN train on batch statistics')
    small = [s for s in args.sizes if s < MIN_SIZE]
    if small:
        parser.error(f'--sizes must be >= {MIN_SIZE} (got {small[0]}): the '
                     f'backbones downsample {MIN_SIZE} times')
    wanted = (args.models or []) + [PARTS[p] for p in args.parts or []]
    args.models = [m for m in MODELS if m in (wanted or DEFAULT_MODELS)]
    # Each value once, in the given order.
    args.cases = list(dict.fromkeys(cases))
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))
    args.sizes = list(dict.fromkeys(args.sizes))
    args.variants = list(dict.fromkeys(args.variants))
    return args


# --------------------------------------------------------------------- #
# Worker side: one (model, variant, batch, size) in this process.
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


def time_interleaved(fns, repeat, warmup, device, timer='wall'):
    """``{name: median ms}`` of the functions, timed in turns (one call of
    each per round), so that all of them see the same machine state."""
    import torch
    clock = time.process_time if timer == 'cpu' else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if device == 'cuda':
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device == 'cuda':
                torch.cuda.synchronize()
            times[name].append(clock() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def time_median(fn, repeat, warmup, device, timer='wall'):
    """The median ms of ``fn`` alone."""
    return time_interleaved({'fn': fn}, repeat, warmup, device, timer)['fn']


def build_detector(config, norm_cfg, conv_cfg=None):
    """The detector of ``config`` (loaded as tools/train.py loads it, its
    ``custom_imports`` included) with ``norm_cfg`` in the backbone."""
    from mmengine.config import Config

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.backbone.norm_cfg = norm_cfg
    if conv_cfg is not None:
        cfg.model.backbone.conv_cfg = conv_cfg
    return MODELS.build(cfg.model)


def build_model(model, norm_cfg, conv_cfg=None, config=DEFAULT_CONFIG):
    """``model`` (a key of MODELS but ``layer``) with ``norm_cfg``, built
    through the registry as a user's config builds it."""
    if model == 'mobilenetv2dn':
        return build_detector(config, norm_cfg, conv_cfg).backbone
    if model == 'ssdlite':
        return build_detector(config, norm_cfg, conv_cfg)
    if model == 'ssdlite-shapes':
        return build_detector(SHAPES_CONFIG, norm_cfg, conv_cfg)
    from mmengine.utils import import_modules_from_strings

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    # As a config with custom_imports = dict(imports=['dn_mmdet']).
    import_modules_from_strings(['dn_mmdet'])
    register_all_modules()
    cfg = dict(BACKBONES[model], norm_cfg=norm_cfg)
    if conv_cfg is not None:
        cfg['conv_cfg'] = conv_cfg
    return MODELS.build(cfg)


def norm_input_shapes(config, size):
    """(C, H, W) of each norm layer's input in MobileNetV2 at ``size``."""
    import torch
    backbone = build_model('mobilenetv2dn', dict(type='BN'),
                           config=config).eval()
    shapes = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, inp: shapes.append(tuple(inp[0].shape[1:])))
        for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        backbone(torch.zeros(1, 3, size, size))
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


class Steps(NamedTuple):
    """What a worker times of one variant of a case (see
    :func:`build_steps`)."""
    model: object  # the nn.Module (None for the lone layers)
    set_mode: Callable[[bool], object]  # train(True) / eval (False)
    train_step: Callable[[], None]
    infer_step: Optional[Callable[[], None]]  # None for the lone layers


def build_steps(args, model_name, variant, batch, size):
    """The :class:`Steps` of one variant of a case; the lone layers are
    timed in training only (no ``model``, no ``infer_step``)."""
    import torch

    from mmcv.cnn import build_norm_layer
    device = args.device
    torch.manual_seed(0)
    norm_cfg = norm_cfg_of(variant)
    fmt = (torch.channels_last if args.channels_last else
           torch.contiguous_format)

    if model_name == 'layer':
        layers = []
        for c, h, w in norm_input_shapes(args.config, size):
            norm = build_norm_layer(norm_cfg, c)[1].to(device).train()
            x = torch.randn(batch, c, h, w, device=device)
            x = x.to(memory_format=fmt).requires_grad_(True)
            layers.append((norm, x, torch.randn_like(x)))

        def layer_step():
            for norm, x, grad in layers:
                norm(x).backward(grad)

        return Steps(None, lambda training: None, layer_step, None)

    model = build_model(model_name, norm_cfg, CONV_CFGS.get(variant),
                        args.config).to(device)
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    if model_name not in DETECTORS:  # a backbone: a tuple of feature maps
        images = torch.randn(batch, 3, size, size,
                             device=device).to(memory_format=fmt)

        def train_step():
            optimizer.zero_grad()
            sum(o.float().mean() for o in model(images)).backward()
            optimizer.step()

        def infer_step():
            model(images)
    else:
        from mmdet.testing import demo_mm_inputs
        num_classes = model.bbox_head.num_classes
        data = demo_mm_inputs(
            batch, [[3, size, size]] * batch,
            num_items=[3] * batch, num_classes=num_classes)
        train_batch = model.data_preprocessor(data, True)
        eval_batch = model.data_preprocessor(data, False)

        def train_step():
            optimizer.zero_grad()
            losses = model(**train_batch, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()
            optimizer.step()

        def infer_step():
            # The network alone: box decoding and NMS depend on how many
            # boxes the (untrained) weights score above the threshold.
            model(eval_batch['inputs'], mode='tensor')

    return Steps(model, model.train, train_step, infer_step)


def run_worker(args, model_name, variants, batch, size):
    """The results (one dict per variant) of one case: each variant alone
    with its peak memory, or with ``--interleave`` all of them in this
    process, their timed steps alternating."""
    import torch

    import dn_mmdet  # noqa: F401
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {v: build_steps(args, model_name, v, batch, size)
             for v in variants}
    results = {v: dict(model=model_name, variant=v, batch=batch, size=size)
               for v in variants}
    phases = [('train', torch.enable_grad, True)]
    if model_name != 'layer':
        phases.append(('infer', torch.no_grad, False))
    for phase, grad_mode, training in phases:
        fns = {}
        for v, step in steps.items():
            step.set_mode(training)
            fns[v] = step.train_step if training else step.infer_step
        with grad_mode():
            if args.interleave:
                times = time_interleaved(fns, args.repeat, args.warmup,
                                         args.device, args.timer)
                for v in variants:
                    results[v][f'{phase}_ms'] = times[v]
                    if 'bn' in times:  # paired: BN's steps ran beside these
                        results[v][f'{phase}_ms{PAIRED}'] = (
                            times[v] / times['bn'])
                continue
            for v in variants:
                with PeakMemory(args.device) as mem:
                    results[v][f'{phase}_ms'] = time_median(
                        fns[v], args.repeat, args.warmup, args.device,
                        args.timer)
                results[v][f'{phase}_peak_mib'] = mem.peak_mib
    return [results[v] for v in variants]


# --------------------------------------------------------------------- #
# Parent side: spawn the workers, print the tables and the summary.
# --------------------------------------------------------------------- #
def plan_jobs(args):
    """(run, model, batch, size, variants) of every worker, in the order
    they run: each run goes over every case, the variants of a case one
    after the other, so that BN and DN alternate and share the machine's
    state (``variants`` is one name; with ``--interleave``, all of them
    joined by commas, for one worker)."""
    groups = ([','.join(args.variants)] if args.interleave else
              args.variants)
    return [(run, model, batch, size, variants)
            for run in range(args.runs) for model in args.models
            for batch, size in args.cases for variants in groups]


def worker_command(args, model, variants, batch, size):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', model,
           variants, str(batch), str(size), '--config', args.config,
           '--device', args.device, '--repeat', str(args.repeat),
           '--warmup', str(args.warmup), '--timer', args.timer]
    if args.interleave:
        cmd.append('--interleave')
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    return cmd


def case_of(result):
    return (result['model'], result['batch'], result['size'],
            result['variant'])


def median_over_runs(runs):
    """One result per case (model, batch, size, variant), in the order the
    cases first appear: the median of each figure over the runs."""
    cases = {}
    for r in runs:
        cases.setdefault(case_of(r), []).append(r)
    results = []
    for (model, batch, size, variant), mine in cases.items():
        merged = dict(model=model, variant=variant, batch=batch, size=size)
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
    """Whether DN's CPU kernel is in use (built here, once, so
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


#: Suffix of a worker's own ratio to BN (``train_ms_x_bn``): with
#: ``--interleave`` a worker times BN's steps beside the others', and the
#: median over runs of these paired ratios leaves out what differs between
#: processes (a worker whose machine ran 30% slower throughout moves the
#: medians of BN's and DN's times apart, not its own ratio).
PAIRED = '_x_bn'


def ratio_of(result, base, key):
    """The ratio of ``result[key]`` to BN's: the median of the workers'
    paired ratios where they were measured (``--interleave``), else
    ``result[key] / base[key]``; None where either is missing or the base
    is not positive (e.g. a peak RSS that did not grow)."""
    if result.get(key + PAIRED) is not None:
        return result[key + PAIRED]
    value, ref = result.get(key), (base or {}).get(key)
    if value is None or ref is None or ref <= 0:
        return None
    return value / ref


def bn_base(results, result):
    """BN's result of the same model, batch and size."""
    return next((r for r in results if r['variant'] == 'bn' and
                 case_of(r)[:3] == case_of(result)[:3]), None)


SUMMARY_KEYS = (('train_ms', 'train'), ('infer_ms', 'infer'),
                ('train_peak_mib', 'train peak mem'))


def summarise(results, args):
    """The worst (largest) ratio to BN per model and figure: over the fast
    DN variants together (``group`` 'DN'), then over each other non-BN
    variant alone. A list of dicts: model, group, and per figure of
    SUMMARY_KEYS ``dict(ratio, batch, size, variant)`` or None."""
    groups = [('DN', [v for v in args.variants if v in DN_VARIANTS])]
    groups += [(v, [v]) for v in args.variants
               if v != 'bn' and v not in DN_VARIANTS]
    summary = []
    for model in args.models:
        rows = [r for r in results if r['model'] == model]
        for group, variants in groups:
            mine = [r for r in rows if r['variant'] in variants]
            if not mine:
                continue
            entry = dict(model=model, group=group)
            for key, _ in SUMMARY_KEYS:
                worst = None
                for r in mine:
                    ratio = ratio_of(r, bn_base(rows, r), key)
                    if ratio is not None and (worst is None
                                              or ratio > worst['ratio']):
                        worst = dict(ratio=ratio, batch=r['batch'],
                                     size=r['size'], variant=r['variant'])
                entry[key] = worst
            summary.append(entry)
    return summary


def format_summary_line(entry):
    name = entry['model'] + ('' if entry['group'] == 'DN' else
                             f" [{entry['group']}]")
    parts = []
    for key, label in SUMMARY_KEYS:
        worst = entry[key]
        parts.append(f'{label} -' if worst is None else
                     f"{label} {worst['ratio']:.2f}x (b{worst['batch']} "
                     f"{worst['size']} {worst['variant']})")
    return f'{name}: worst ' + ', '.join(parts)


def format_header(args, kernel_status):
    return (
        f'batch x size {" ".join(f"{b}x{s}" for b, s in args.cases)} px, '
        f'device {args.device}, '
        f'threads {args.threads or "default"}, median {args.timer} time '
        f'of {args.repeat}'
        f'{f" (median of {args.runs} runs)" if args.runs > 1 else ""}'
        f'{", glibc keeps freed memory" if args.keep_freed_memory else ""}'
        f'{", variants interleaved in one process" if args.interleave else ""}'
        f'; DN CPU kernel: {kernel_status}')


def format_table(results, args, kernel_status):
    """The header line, then a table per model (rows batch x size x
    variant) and the summary lines."""
    lines = [format_header(args, kernel_status)]

    def ratio(r, key):
        value = ratio_of(r, bn_base(results, r), key)
        return '-' if value is None else f'{value:.2f}'

    def fmt(value, digits=1):
        return '-' if value is None else f'{value:.{digits}f}'

    for model in args.models:
        lines += [
            '', f'{model}: {MODELS[model]}', '',
            '| batch | size | variant | train ms | x BN | train peak MiB | '
            'x BN | infer ms | x BN | infer peak MiB |',
            '|---|---|---|---|---|---|---|---|---|---|'
        ]
        for r in results:
            if r['model'] != model:
                continue
            lines.append(
                f"| {r['batch']} | {r['size']} | {r['variant']} | "
                f"{fmt(r.get('train_ms'))} | {ratio(r, 'train_ms')} | "
                f"{fmt(r.get('train_peak_mib'))} | "
                f"{ratio(r, 'train_peak_mib')} | {fmt(r.get('infer_ms'))} | "
                f"{ratio(r, 'infer_ms')} | {fmt(r.get('infer_peak_mib'))} |")
    summary = summarise(results, args)
    if summary:
        dn = [v for v in args.variants if v in DN_VARIANTS]
        lines += ['', 'Worst ratio to BN per model (the first line of a '
                  f'model: over {" and ".join(dn) or "no DN variant"}):']
        lines += [format_summary_line(entry) for entry in summary]
    return '\n'.join(lines)


def _duration(seconds):
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
    far) plus the model's time per input pixel so far."""
    if not done:
        return None
    seen = {job[1:]: sec for job, sec in done}
    startup = min(sec for _, sec in done)

    def pixels(job):
        return job[2] * job[3] * job[3]

    def rate(model):
        mine = [(sec - startup) / pixels(job) for job, sec in done
                if job[1] == model] or [(sec - startup) / pixels(job)
                                        for job, sec in done]
        return statistics.median(mine)

    return sum(seen.get(job[1:], startup + rate(job[1]) * pixels(job))
               for job in jobs[len(done):])


def main():
    args = parse_args()
    if args.device == 'auto':
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.worker:
        model, variants, batch, size = args.worker
        print(json.dumps(run_worker(args, model, variants.split(','),
                                    int(batch), int(size))))
        return
    kernel_status = dn_kernel_status(args)
    jobs = plan_jobs(args)
    print(f'{len(jobs)} workers: {len(args.models)} model(s) x '
          f'{len(args.cases)} batch x size case(s) x {len(args.variants)} '
          f'variant(s)'
          f'{" (interleaved in each worker)" if args.interleave else ""} x '
          f'{args.runs} run(s)',
          flush=True)
    runs, done, start = [], [], time.perf_counter()
    for i, job in enumerate(jobs, 1):
        run, model, batch, size, variant = job
        left = estimate_left(jobs, done)
        eta = ('' if left is None else
               f' (elapsed {_duration(time.perf_counter() - start)}, about '
               f'{_duration(left)} left)')
        print(f'[{i}/{len(jobs)}] run {run + 1}: {model} b{batch} {size} '
              f'{variant} ...{eta}', flush=True)
        job_start = time.perf_counter()
        proc = subprocess.run(
            worker_command(args, model, variant, batch, size),
            capture_output=True, text=True, env=worker_env(args))
        if proc.returncode != 0:
            sys.exit(f'benchmark worker {model} b{batch} {size} {variant} '
                     f'failed:\n{proc.stderr[-3000:]}')
        runs += json.loads(proc.stdout.strip().splitlines()[-1])
        done.append((job, time.perf_counter() - job_start))
    print(f'all {len(jobs)} workers in '
          f'{_duration(time.perf_counter() - start)}', flush=True)
    results = median_over_runs(runs)
    table = format_table(results, args, kernel_status)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), results=results, runs=runs,
                           summary=summarise(results, args), table=table),
                      f, indent=2)


if __name__ == '__main__':
    main()
