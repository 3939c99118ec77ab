"""Where a lone DN-B layer's CPU time goes, against BN with its clamp.

At one input shape, in one process, interleaved (:mod:`.timing`):

* inference (eval, ``torch.no_grad``): BN then ReLU6 (``bn``); the DN
  layer with its fused ReLU6 (``dn``, :meth:`DynamicNorm2d.forward_clamped`
  as a fused ConvModule calls it); the C++ op alone, called with the
  layer's tensors (``op``: pooling pass, SC-Module,
  normalise-affine-clamp pass); BN's normalising pass alone (``pass``, the
  work BN and DN both do). ``dn - op`` is Python's share, ``op - pass``
  about the pooling pass and the SC-Module;
* training (forward and backward, ReLU6 after BN, fused in DN, gradients
  set as after ``optimizer.zero_grad()``): ``bn``, ``dn`` and the op's two
  halves called directly (``op``); ``dn - op`` is Python's and autograd's
  share.
"""

import torch

from dn_mmdet.norm import DynamicNorm2d

from .timing import interleaved_seconds

#: The columns of :func:`format_row`.
COLUMNS = (
    'inference: BN+ReLU6, DN, DN-BN, Python, pool+SC, pass | '
    'training: BN+ReLU6, DN, DN-BN, Python+autograd, op (us)'
)
HEADER = (
    '| shape | BN+act | DN | DN-BN | Python | pool+SC | pass | '
    'BN+act | DN | DN-BN | Python+autograd | op |'
)


def median_us(fns, rounds, calls):
    """{name: median CPU time of one call in us}, the functions interleaved
    round by round (one untimed call of each first)."""
    seconds = interleaved_seconds(
        fns, rounds, warmup=1, calls=calls, clock='cpu'
    )
    return {name: s * 1e6 for name, s in seconds.items()}


def profile_shape(shape, rounds, calls):
    """The inference and training times (two ``{name: us}``, see the
    module's docstring) of BN and DN-B (r=16, g='oup') at ``shape``
    (N, C, H, W). Needs DN's CPU ops (``dn_mmdet.ops.load_cpu_ops()``)."""
    n, c, h, w = shape
    torch.manual_seed(0)
    x = torch.randn(shape)
    grad = torch.randn(shape)
    bn = torch.nn.BatchNorm2d(c)
    relu6 = torch.nn.ReLU6()
    dn = DynamicNorm2d(c, r=16, g='oup')
    torch.nn.init.normal_(dn.sc.fc2.weight, std=0.01)
    op = torch.ops.dn_mmdet
    eps, bounds = dn.eps, (0.0, 6.0)

    bn.eval(), dn.eval()
    weights = [t.detach() for t in dn._op_tensors()]
    fc2_groups = dn.sc.fc2.groups
    sc_weights, base = weights[:3], weights[3:5]
    with torch.no_grad():
        infer = median_us(
            {
                'bn': lambda: relu6(bn(x)),
                'dn': lambda: dn.forward_clamped(x, bounds),
                'op': lambda: op.dn_b_inference(
                    x,
                    *sc_weights,
                    fc2_groups,
                    *base,
                    *weights[5:],
                    eps,
                    *bounds,
                ),
                'pass': lambda: bn(x),
            },
            rounds,
            calls,
        )

    bn.train(), dn.train()
    x_grad = x.clone().requires_grad_(True)

    def op_step():
        saved = op.dn_b_train(x, *sc_weights, fc2_groups, *base, eps, *bounds)
        _, mean, _, *rest = saved
        op.dn_b_train_backward(
            grad,
            x,
            mean,
            *rest,
            sc_weights[0],
            sc_weights[2],
            fc2_groups,
            *bounds,
        )

    def train_step(layer, forward):
        # As a training step after optimizer.zero_grad(): gradients are
        # set, not accumulated.
        layer.zero_grad(set_to_none=True)
        x_grad.grad = None
        forward().backward(grad)

    train = median_us(
        {
            'bn': lambda: train_step(bn, lambda: relu6(bn(x_grad))),
            'dn': lambda: train_step(
                dn, lambda: dn.forward_clamped(x_grad, bounds)
            ),
            'op': op_step,
        },
        rounds,
        calls,
    )
    return infer, train


def format_row(label, infer, train):
    """A table row of :data:`HEADER` from :func:`profile_shape`'s
    figures."""
    cells = [
        infer['bn'],
        infer['dn'],
        infer['dn'] - infer['bn'],
        infer['dn'] - infer['op'],
        infer['op'] - infer['pass'],
        infer['pass'],
        train['bn'],
        train['dn'],
        train['dn'] - train['bn'],
        train['dn'] - train['op'],
        train['op'],
    ]
    return f'| {label} | ' + ' | '.join(f'{v:.0f}' for v in cells) + ' |'


def add_to(total, part):
    """Adds ``part``'s figures to ``total``'s (both ``{name: us}``)."""
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def profile_table(title, shapes, rounds, calls, threads):
    """Yields the lines of the profile of ``shapes`` (a title, the table's
    header, a row per shape as it is measured, and with several shapes a
    row of their sum)."""
    yield (
        f'\n{title}: {COLUMNS}, CPU time of {threads} thread(s), '
        f'median of {rounds} rounds of {calls}\n'
    )
    yield HEADER
    yield '|---' * 12 + '|'
    total_infer, total_train = {}, {}
    for shape in shapes:
        infer, train = profile_shape(shape, rounds, calls)
        yield format_row('x'.join(map(str, shape)), infer, train)
        add_to(total_infer, infer)
        add_to(total_train, train)
    if len(shapes) > 1:
        yield format_row(f'sum of {len(shapes)}', total_infer, total_train)
