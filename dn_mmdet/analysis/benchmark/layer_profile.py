"""Where a lone DN-B layer's CPU time goes, against BN with its clamp.

At one input shape, in one process, interleaved (:mod:`.timing`):

* inference (eval, ``torch.no_grad``): BN then ReLU6 (``bn``); the DN
  layer with its fused ReLU6 (``dn``); the C++ op alone, called with the
  layer's tensors (``op``: pooling pass, SC-Module,
  normalise-affine-clamp pass); that last pass alone (``pass``, the work
  BN does too). ``dn - op`` is Python's share, ``op - pass`` the pooling
  pass and the SC-Module;
* training (forward and backward, ReLU6 after BN, fused in DN, gradients
  set as after ``optimizer.zero_grad()``): ``bn``, ``dn`` and the op's two
  halves called directly (``op``); ``dn - op`` is Python's and autograd's
  share.
"""
import torch

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.ops import dn_cpu
from .timing import interleaved_seconds

#: The columns of :func:`format_row`.
COLUMNS = ('inference: BN+ReLU6, DN, DN-BN, Python, pool+SC, pass | '
           'training: BN+ReLU6, DN, DN-BN, Python+autograd, op (us)')
HEADER = ('| shape | BN+act | DN | DN-BN | Python | pool+SC | pass | '
          'BN+act | DN | DN-BN | Python+autograd | op |')


def median_us(fns, rounds, calls):
    """{name: median CPU time of one call in us}, the functions interleaved
    round by round (one untimed call of each first)."""
    seconds = interleaved_seconds(fns, rounds, warmup=1, calls=calls,
                                  clock='cpu')
    return {name: s * 1e6 for name, s in seconds.items()}


def profile_shape(shape, rounds, calls):
    """The inference and training times (two ``{name: us}``, see the
    module's docstring) of BN and DN-B (r=16, g='oup') at ``shape``
    (N, C, H, W). Needs DN's CPU kernel (``dn_cpu.load()``)."""
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


def format_row(label, infer, train):
    """A table row of :data:`HEADER` from :func:`profile_shape`'s
    figures."""
    cells = [infer['bn'], infer['dn'], infer['dn'] - infer['bn'],
             infer['dn'] - infer['op'], infer['op'] - infer['pass'],
             infer['pass'], train['bn'], train['dn'],
             train['dn'] - train['bn'], train['dn'] - train['op'],
             train['op']]
    return f'| {label} | ' + ' | '.join(f'{v:.0f}' for v in cells) + ' |'


def add_to(total, part):
    """Adds ``part``'s figures to ``total``'s (both ``{name: us}``)."""
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def profile_table(title, shapes, rounds, calls, threads):
    """Yields the lines of the profile of ``shapes`` (a title, the table's
    header, a row per shape as it is measured, and with several shapes a
    row of their sum)."""
    yield (f'\n{title}: {COLUMNS}, CPU time of {threads} thread(s), '
           f'median of {rounds} rounds of {calls}\n')
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
