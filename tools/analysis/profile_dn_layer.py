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
"""
import argparse
import statistics
import sys
import time

import torch

import dn_mmdet  # noqa: F401  (registers DN)
from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.ops import dn_cpu

from benchmark_norm import DEFAULT_CONFIG, norm_input_shapes  # beside it


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
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--calls', type=int, default=20)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    if not args.shapes and not args.cases:
        parser.error('give --shapes or --cases')
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


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not dn_cpu.load():
        sys.exit(f'profile_dn_layer: the DN CPU kernel is not available '
                 f'({dn_cpu.error}); there is nothing to profile')
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
