"""Where a DN-B layer's time goes on the CPU, against BN with its clamp.

For each input shape, times in one process, interleaved (CPU time of one
thread, the median of ``--rounds`` rounds of ``--calls`` calls each):

* inference (eval, ``torch.no_grad``): BN then ReLU6 (``bn``); the DN layer
  with its fused ReLU6 (``dn``); the C++ op alone, called with the layer's
  tensors (``op``: pooling pass, SC-Module, normalise-affine-clamp pass);
  the normalise-affine-clamp pass alone (``pass``, the work BN does too).
  So ``dn - op`` is Python's share (the module call, path choice, argument
  gathering), ``op - pass`` the pooling pass and the SC-Module;
* training (forward and backward, ReLU6 after BN, fused in DN, gradients
  set as after ``optimizer.zero_grad()``): ``bn``, ``dn``, and the op's two
  halves called directly (``op``); ``dn - op`` is Python's and autograd's
  share. Each layer here starts its own backward pass (``.backward()``,
  ~0.1-0.2 ms on a slow vCPU, in BN's column too), which a model pays once
  for all its layers: that column overstates what a layer costs in a
  model, the difference DN - BN does not.

``--shapes 2x384x8x8 ...`` profiles given shapes; ``--cases 2x128`` the 52
norm layers of MobileNetV2 at that batch and input size (summed in the last
row), which is where the "DN against BN" table of the README spends its
time. Example::

    python tools/analysis/profile_dn_layer.py --cases 2x128 --threads 1

Alone, a layer finds its weights and input in cache from its previous call.
``--in-model`` times the layers where they run instead: inside inference
forward passes of whole models (``--models``, as the benchmark builds them:
with BN, with DN-B, and with DN-B's layers as the op's call alone, in
turns), each norm layer with the clamp activation that runs right after it,
beside the bytes of its SC-Module's weights; and how long reading all those
weights takes once the caches have been evicted, and warm. Example::

    python tools/analysis/profile_dn_layer.py --in-model --models \
        mobilenetv2dn resnet50 --cases 2x128 --rounds 15 --threads 1
"""
import argparse
import statistics
import sys
import time

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

import dn_mmdet  # noqa: F401  (registers DN)
from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.base import NormLayer
from dn_mmdet.norm.activation_fusion import mark_clamped
from dn_mmdet.norm.functional import activation_bounds, dn_b_inference_cpu
from dn_mmdet.ops import dn_cpu

from benchmark_norm import (DEFAULT_CONFIG, MODELS, build_steps,  # beside it
                            norm_input_shapes)

#: The benchmark's variants --in-model builds: BN and DN-B.
IN_MODEL_VARIANTS = ('bn', 'dnb-r16-goup')
#: Written before each cold read: more than this machine's last-level cache
#: (32 MiB of L3 on the project's 2-vCPU machines).
EVICT_BYTES = 128 * 2**20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shapes', nargs='+', default=[], metavar='NxCxHxW',
                        help='input shapes, e.g. 2x384x8x8')
    parser.add_argument('--cases', nargs='+', default=[],
                        metavar='BATCHxSIZE',
                        help="MobileNetV2's 52 norm input shapes at this "
                        'batch and input size, e.g. 2x128')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='detector config whose MobileNetV2DN gives '
                        'the shapes of --cases')
    parser.add_argument('--in-model', action='store_true',
                        help='time the norm layers inside forward passes of '
                        '--models at each of --cases (inference)')
    parser.add_argument('--models', nargs='+', default=['mobilenetv2dn'],
                        choices=[m for m in MODELS if m != 'layer'],
                        help='the models of --in-model (as the benchmark '
                        'builds them)')
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--calls', type=int, default=20)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    if not args.shapes and not args.cases:
        parser.error('give --shapes or --cases')
    if args.in_model and args.shapes:
        parser.error('--in-model takes --cases (batch x input size), not '
                     '--shapes')
    try:
        args.shapes = [_dims(s, 4) for s in args.shapes]
        args.cases = [_dims(s, 2) for s in args.cases]
    except ValueError as error:
        parser.error(str(error))
    return args


def _dims(text, count):
    parts = text.lower().split('x')
    if len(parts) != count or not all(p.isdigit() and int(p) > 0
                                      for p in parts):
        raise ValueError(f'{text!r}: expected {count} positive integers '
                         "joined by 'x'")
    return tuple(int(p) for p in parts)


def median_us(fns, rounds, calls):
    """{name: median CPU time of one call in us}, the functions interleaved
    round by round so that all see the same machine state."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            for _ in range(calls):
                fn()
            times[name].append((time.process_time() - start) / calls * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def profile_shape(shape, rounds, calls):
    """The inference and training times of BN and DN-B at ``shape``."""
    n, c, h, w = shape
    torch.manual_seed(0)
    x = torch.randn(shape)
    grad = torch.randn(shape)
    bn = torch.nn.BatchNorm2d(c)
    relu6 = torch.nn.ReLU6()
    dn = DynamicNorm2d(c, r=16, g='oup')
    torch.nn.init.normal_(dn.sc.fc2.weight, std=0.01)
    dn.fuse_activation(torch.nn.ReLU6())
    op = dn_cpu.module
    eps, lo, hi = dn.eps, 0.0, 6.0

    bn.eval(), dn.eval()
    tensors = dn._dn_b_tensors()
    ones, zeros = torch.ones(n, c), torch.zeros(n, c)
    mean, var = tensors.running_mean, tensors.running_var
    with torch.no_grad():
        infer = median_us({
            'bn': lambda: relu6(bn(x)),
            'dn': lambda: dn(x),
            'op': lambda: op.dn_b_inference(x, *tensors, eps, lo, hi),
            'pass': lambda: op.normalize_act(x, ones, zeros, mean, var, eps,
                                             lo, hi),
        }, rounds, calls)

    bn.train(), dn.train()
    x_grad = x.clone().requires_grad_(True)
    weights = [t.detach() for t in tensors[:3]]
    fc2_groups, base_scale, base_shift = tensors[3:6]

    def op_step():
        saved = op.dn_b_train_forward(x, *weights, fc2_groups, base_scale,
                                      base_shift, eps, lo, hi, mean, var,
                                      0.0)
        op.dn_b_train_backward(grad, x, *saved[1:], weights[0], weights[2],
                               fc2_groups, lo, hi)

    def train_step(layer, forward):
        # As a training step after optimizer.zero_grad(): gradients are
        # set, not accumulated.
        layer.zero_grad(set_to_none=True)
        x_grad.grad = None
        forward().backward(grad)

    train = median_us({
        'bn': lambda: train_step(bn, lambda: relu6(bn(x_grad))),
        'dn': lambda: train_step(dn, lambda: dn(x_grad)),
        'op': op_step,
    }, rounds, calls)
    return infer, train


COLUMNS = ('inference: BN+ReLU6, DN, DN-BN, Python, pool+SC, pass | '
           'training: BN+ReLU6, DN, DN-BN, Python+autograd, op (us)')


def row(label, infer, train):
    cells = [infer['bn'], infer['dn'], infer['dn'] - infer['bn'],
             infer['dn'] - infer['op'], infer['op'] - infer['pass'],
             infer['pass'], train['bn'], train['dn'],
             train['dn'] - train['bn'], train['dn'] - train['op'],
             train['op']]
    return f'| {label} | ' + ' | '.join(f'{v:.0f}' for v in cells) + ' |'


# --------------------------------------------------------------------- #
# --in-model: the norm layers inside forward passes of a whole model
# --------------------------------------------------------------------- #
def _inside_norm_layers(model):
    """ids of the modules inside dn_mmdet's norm layers (a DN layer's
    statistics child and fused activation): parts, not layers."""
    return {id(child) for m in model.modules() if isinstance(m, NormLayer)
            for child in m.modules() if child is not m}


def norm_layers(model):
    """The model's norm layers in module order: dn_mmdet's and BatchNorms
    (not those inside dn_mmdet's)."""
    inside = _inside_norm_layers(model)
    return [m for m in model.modules()
            if isinstance(m, (NormLayer, _BatchNorm)) and id(m) not in inside]


class NormLayerTimer:
    """Adds up the time each norm layer of ``model`` takes in its forward
    passes, with the clamp activation that runs right after it (BN's ReLU6;
    in DN's model, the pass-through left where DN took the clamp over).

    The modules' ``forward`` methods are wrapped as instance attributes,
    not hooked: a forward hook would send DN to its torch path (see
    :func:`dn_mmdet.norm.functional.has_forward_hooks`). Convolutions are
    wrapped too, untimed, so that an activation after a convolution is not
    counted to the norm layer before it.

    Args:
        model (nn.Module): Its :func:`norm_layers` are timed.
        clock (callable): Seconds, e.g. ``time.process_time``.

    Attributes:
        layers (list[nn.Module]): The timed norm layers.
        seconds (list[float]): Per layer, its time since :meth:`reset`.
        input_shapes (list[tuple]): Per layer, its last input's shape.
        replacements (list): Per layer, a function run instead of its
            forward while :attr:`replace` is True (None: none).
        replace (bool): See ``replacements``.
    """

    def __init__(self, model, clock=time.process_time):
        self.layers = norm_layers(model)
        self.clock = clock
        self.seconds = [0.0] * len(self.layers)
        self.input_shapes = [None] * len(self.layers)
        self.replacements = [None] * len(self.layers)
        self.replace = False
        self._last = None  # the layer whose output the next module may take
        for index, layer in enumerate(self.layers):
            self._wrap(layer, index)
        inside = _inside_norm_layers(model)
        for module in model.modules():
            if id(module) in inside:
                continue
            if activation_bounds(module) is not None:
                self._wrap(module, 'activation')
            elif isinstance(module, _ConvNd):
                self._wrap(module, 'other')

    def reset(self):
        self.seconds = [0.0] * len(self.layers)
        self._last = None

    def _wrap(self, module, role):
        """``role``: the index of a norm layer, ``'activation'`` or
        ``'other'``."""
        forward = module.forward

        def timed(*args, **kwargs):
            run = forward
            if self.replace and isinstance(role, int):
                run = self.replacements[role] or forward
            start = self.clock()
            out = run(*args, **kwargs)
            elapsed = self.clock() - start
            if role == 'activation':
                if self._last is not None:
                    self.seconds[self._last] += elapsed
                self._last = None
            elif role == 'other':
                self._last = None
            else:
                self.seconds[role] += elapsed
                self.input_shapes[role] = tuple(args[0].shape)
                self._last = role
            return out

        module.forward = timed


def op_alone(layer):
    """A DN-B layer's inference as the C++ op's call alone, its arguments
    gathered beforehand (and the fused clamp's tag, which spares the
    pass-through after it its clamp): what the layer would cost without
    Python of its own. None for other layers."""
    tensors = (layer._dn_b_tensors()
               if isinstance(layer, DynamicNorm2d) and layer.mode == 'B'
               else None)
    if tensors is None:
        return None
    bounds = layer._activation_bounds()

    def forward(x):
        y = dn_b_inference_cpu(x, tensors, layer.eps, bounds)
        if bounds is not None:
            mark_clamped(y, bounds)
        return y

    return forward


def sc_weight_tensors(layer):
    """The SC-Module's weights of a DN layer (none for other layers)."""
    sc = layer._modules.get('sc')
    return [] if sc is None else [p.detach() for p in sc.parameters()]


def read_ms(tensors, rounds):
    """Median ms to read ``tensors`` (one ``sum`` each) right after
    :data:`EVICT_BYTES` were written (cold), and again at once (warm)."""
    evict = torch.empty(EVICT_BYTES // 4)
    cold, warm = [], []
    for _ in range(rounds):
        evict.fill_(1.0)
        for times in (cold, warm):
            start = time.process_time()
            for t in tensors:
                t.sum()
            times.append((time.process_time() - start) * 1e3)
    return statistics.median(cold), statistics.median(warm)


#: The columns of --in-model: BN's model, DN-B's, and DN-B's with each
#: layer's forward replaced by :func:`op_alone`.
IN_MODEL_RUNS = ('bn', 'dn', 'op')


def profile_in_model(model_name, batch, size, args):
    """Per norm layer, the median CPU time (us) in ``model_name``'s
    inference forward passes with BN (``'bn'``), with DN-B (``'dn'``) and
    with DN-B's layers as the op alone (``'op'``), the three in turns.

    Returns:
        tuple: ``(rows, totals, sc_tensors)``. A row is ``(input shape, SC
        weight bytes, {run: us})``; ``totals`` maps ``'forward'`` and
        ``'norm'`` (all the layers with their activations) to ``{run:
        median ms over the rounds}``; ``sc_tensors`` are all the
        SC-Modules' weights.
    """
    settings = argparse.Namespace(device='cpu', channels_last=False,
                                  config=args.config)
    models = {}
    for variant in IN_MODEL_VARIANTS:
        steps = build_steps(settings, model_name, variant, batch, size)
        steps.set_mode(False)
        with torch.no_grad():  # the first forward fuses DN's activations
            steps.infer_step()
        models[variant] = (steps.infer_step, NormLayerTimer(steps.model))
    (bn_step, bn_timer), (dn_step, dn_timer) = models.values()
    if len(bn_timer.layers) != len(dn_timer.layers):
        raise RuntimeError(
            f'{model_name}: {len(bn_timer.layers)} norm layers with BN but '
            f'{len(dn_timer.layers)} with DN-B')
    dn_timer.replacements = [op_alone(layer) for layer in dn_timer.layers]
    runs = {'bn': (bn_step, bn_timer, False), 'dn': (dn_step, dn_timer, False),
            'op': (dn_step, dn_timer, True)}
    per_layer = {run: [] for run in runs}
    totals = {key: {run: [] for run in runs} for key in ('forward', 'norm')}
    with torch.no_grad():
        for _ in range(args.rounds + 1):  # the first round warms up
            for run, (infer_step, timer, replace) in runs.items():
                timer.reset()
                timer.replace = replace
                start = time.process_time()
                infer_step()
                totals['forward'][run].append(time.process_time() - start)
                totals['norm'][run].append(sum(timer.seconds))
                per_layer[run].append(timer.seconds)
                timer.replace = False
    layer_us = {run: [statistics.median(t[1:]) * 1e6
                      for t in zip(*per_layer[run])] for run in runs}
    totals = {key: {run: statistics.median(t[1:]) * 1e3
                    for run, t in by_run.items()}
              for key, by_run in totals.items()}
    sc_tensors = [sc_weight_tensors(layer) for layer in dn_timer.layers]
    rows = [(dn_timer.input_shapes[i],
             sum(t.numel() * t.element_size() for t in sc_tensors[i]),
             {run: layer_us[run][i] for run in runs})
            for i in range(len(dn_timer.layers))]
    return rows, totals, [t for ts in sc_tensors for t in ts]


def in_model_row(label, shape, sc_kib, times):
    bn, dn, op = (times[run] for run in IN_MODEL_RUNS)
    return (f'| {label} | {shape} | {sc_kib:.1f} | {bn:.0f} | {dn:.0f} | '
            f'{op:.0f} | {dn - bn:+.0f} | {dn - op:.0f} | {op - bn:+.0f} |')


def print_in_model(model_name, batch, size, args):
    rows, totals, sc_tensors = profile_in_model(model_name, batch, size, args)
    print(f'\n{MODELS[model_name]} ({model_name}), {batch}x{size}, inside '
          f'inference forward passes: CPU time of {args.threads} thread(s), '
          f'median of {args.rounds} forward passes of BN, DN-B (r=16, '
          "g=oup) and DN-B with each layer as the op's call alone, in "
          'turns; a layer with the clamp activation that runs right after '
          'it (us)\n')
    print('| layer | input | SC weights KiB | BN+act | DN | DN op alone | '
          'DN-BN | DN: Python | op alone - BN |')
    print('|---' * 9 + '|')
    for i, (shape, nbytes, times) in enumerate(rows):
        print(in_model_row(i + 1, 'x'.join(map(str, shape)), nbytes / 1024,
                           times))
    sc_bytes = sum(row[1] for row in rows)
    norm, forward = totals['norm'], totals['forward']
    print(in_model_row(f'all {len(rows)} (median of the sums)', '',
                       sc_bytes / 1024, {k: v * 1e3 for k, v in norm.items()}))
    print(f"\nWhole forward (ms): BN {forward['bn']:.2f}, DN-B "
          f"{forward['dn']:.2f} ({forward['dn'] / forward['bn']:.2f}x), "
          f"DN-B as ops alone {forward['op']:.2f} "
          f"({forward['op'] / forward['bn']:.2f}x); outside the norm layers "
          f"and their activations: BN {forward['bn'] - norm['bn']:.2f}, "
          f"DN-B {forward['dn'] - norm['dn']:.2f}.")
    cold, warm = read_ms(sc_tensors, args.rounds)
    print(f"The SC-Modules' weights, {sc_bytes / 2**20:.2f} MiB: reading "
          f'them took {cold:.2f} ms after evicting the caches '
          f'({EVICT_BYTES // 2**20} MiB written), {warm:.2f} ms warm.')


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not dn_cpu.load():
        sys.exit(f'profile_dn_layer: the DN CPU kernel is not available '
                 f'({dn_cpu.error}); there is nothing to profile')
    if args.in_model:
        for model_name in args.models:
            for batch, size in args.cases:
                print_in_model(model_name, batch, size, args)
        return
    groups = [(f'{"x".join(map(str, s))}', [s]) for s in args.shapes]
    for batch, size in args.cases:
        shapes = [(batch, *chw) for chw in norm_input_shapes(args.config,
                                                             size)]
        groups.append((f'MobileNetV2 {batch}x{size}', shapes))
    header = ('| shape | BN+act | DN | DN-BN | Python | pool+SC | pass | '
              'BN+act | DN | DN-BN | Python+autograd | op |')
    for title, shapes in groups:
        print(f'\n{title}: {COLUMNS}, CPU time of {args.threads} '
              f'thread(s), median of {args.rounds} rounds of {args.calls}\n')
        print(header)
        print('|---' * 12 + '|')
        total_infer, total_train = {}, {}
        for i, shape in enumerate(shapes):
            infer, train = profile_shape(shape, args.rounds, args.calls)
            print(row('x'.join(map(str, shape)), infer, train), flush=True)
            for total, part in ((total_infer, infer), (total_train, train)):
                for key, value in part.items():
                    total[key] = total.get(key, 0.0) + value
            print(f'  [{i + 1}/{len(shapes)}]', file=sys.stderr, flush=True)
        if len(shapes) > 1:
            print(row(f'sum of {len(shapes)}', total_infer, total_train))


if __name__ == '__main__':
    main()
