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

The measuring is done by :mod:`dn_mmdet.analysis.benchmark`
(``layer_profile``, ``in_model``).
"""

import argparse
import sys

import torch

from dn_mmdet.analysis.benchmark import (
    DEFAULT_CONFIG,
    MODELS,
    norm_input_shapes,
    parse_dims,
)
from dn_mmdet.analysis.benchmark.in_model import (
    format_in_model,
    profile_in_model,
    read_ms,
)
from dn_mmdet.analysis.benchmark.layer_profile import profile_table
from dn_mmdet.ops import dn_cpu, load_cpu_ops
from dn_mmdet.utils.cli_args import positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--shapes',
        nargs='+',
        default=[],
        metavar='NxCxHxW',
        help='input shapes, e.g. 2x384x8x8',
    )
    parser.add_argument(
        '--cases',
        nargs='+',
        default=[],
        metavar='BATCHxSIZE',
        help="MobileNetV2's 52 norm input shapes at this "
        'batch and input size, e.g. 2x128',
    )
    parser.add_argument(
        '--config',
        default=DEFAULT_CONFIG,
        help='detector config whose MobileNetV2DN gives the shapes of --cases',
    )
    parser.add_argument(
        '--in-model',
        action='store_true',
        help='time the norm layers inside forward passes of '
        '--models at each of --cases (inference)',
    )
    parser.add_argument(
        '--models',
        nargs='+',
        default=['mobilenetv2dn'],
        choices=[m for m in MODELS if m != 'layer'],
        help='the models of --in-model (as the benchmark builds them)',
    )
    parser.add_argument('--rounds', type=positive_int, default=7)
    parser.add_argument('--calls', type=positive_int, default=20)
    parser.add_argument('--threads', type=positive_int, default=1)
    args = parser.parse_args(argv)
    if not args.shapes and not args.cases:
        parser.error('give --shapes or --cases')
    if args.in_model and args.shapes:
        parser.error(
            '--in-model takes --cases (batch x input size), not --shapes'
        )
    try:
        args.shapes = [parse_dims(s, 4) for s in args.shapes]
        args.cases = [parse_dims(s, 2) for s in args.cases]
    except ValueError as error:
        parser.error(str(error))
    return args


def print_in_model(args):
    for model_name in args.models:
        for batch, size in args.cases:
            rows, totals, sc_tensors = profile_in_model(
                model_name, batch, size, args.rounds, args.config
            )
            title = f'{MODELS[model_name]} ({model_name}), {batch}x{size}'
            print(
                '\n'.join(
                    format_in_model(
                        title,
                        rows,
                        totals,
                        read_ms(sc_tensors, args.rounds),
                        args.threads,
                        args.rounds,
                    )
                )
            )


def print_layers(args):
    groups = [(f'{"x".join(map(str, s))}', [s]) for s in args.shapes]
    for batch, size in args.cases:
        shapes = [
            (batch, *chw) for chw in norm_input_shapes(args.config, size)
        ]
        groups.append((f'MobileNetV2 {batch}x{size}', shapes))
    for title, shapes in groups:
        for line in profile_table(
            title, shapes, args.rounds, args.calls, args.threads
        ):
            print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not load_cpu_ops():
        sys.exit(
            f'profile_dn_layer: the DN CPU kernel is not available '
            f'({dn_cpu.error}); there is nothing to profile'
        )
    if args.in_model:
        print_in_model(args)
    else:
        print_layers(args)


if __name__ == '__main__':
    main()
