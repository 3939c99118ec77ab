"""DN's registered ops (``torch.ops.dn_mmdet.*``): what torch requires of
an op (``torch.library.opcheck``: schema, fake kernel, autograd
registration, AOT dispatch), the C++ ops' own checks and arithmetic, and the
fallback where the kernel cannot be built."""

import copy
import math
import warnings

import pytest
import torch

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.reference import dynamic_norm_reference
from dn_mmdet.ops import dn_cpu, load_cpu_ops

INF = math.inf


@pytest.fixture(scope='module', autouse=True)
def cpu_ops():
    """This machine has a C++ compiler (mmcv is built from source)."""
    assert load_cpu_ops(), dn_cpu.error
    assert dn_cpu.origin in ('installed', 'cache', 'compiled')


def sc_weights(
    channels=8, hidden=4, groups=2, dtype=torch.float32, requires_grad=False
):
    gen = torch.Generator().manual_seed(0)
    shapes = [(hidden, channels), (hidden,), (2 * channels, hidden // groups)]
    return [
        (torch.randn(s, generator=gen, dtype=dtype) * 0.5).requires_grad_(
            requires_grad
        )
        for s in shapes
    ]


def train_args(dtype=torch.float32, requires_grad=True):
    x = torch.randn(3, 8, 5, 4, dtype=dtype, requires_grad=requires_grad)
    w1, b1, w2 = sc_weights(dtype=dtype, requires_grad=requires_grad)
    ones = torch.ones(8, dtype=dtype)
    return (x, w1, b1, w2, 2, ones * 1.1, ones * 0.2, 1e-5, 0.0, 6.0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_opcheck_cpu_ops(dtype):
    args = train_args(dtype)
    torch.library.opcheck(torch.ops.dn_mmdet.dn_b_train.default, args)
    x, w1, b1, w2, groups, scale, shift = [
        a.detach() if torch.is_tensor(a) else a for a in args[:7]
    ]
    mean, var = torch.randn(8, dtype=dtype), torch.rand(8, dtype=dtype) + 0.5
    torch.library.opcheck(
        torch.ops.dn_mmdet.dn_b_inference.default,
        (x, w1, b1, w2, groups, scale, shift, mean, var, 1e-5, -INF, INF),
    )
    saved = torch.ops.dn_mmdet.dn_b_train(
        x, w1, b1, w2, groups, scale, shift, 1e-5, 0.0, 6.0
    )
    y, mean, _, invstd, pooled, hidden, alpha, scale_, shift_ = saved
    torch.library.opcheck(
        torch.ops.dn_mmdet.dn_b_train_backward.default,
        (
            torch.randn_like(y),
            x,
            mean,
            invstd,
            pooled,
            hidden,
            alpha,
            scale_,
            shift_,
            w1,
            w2,
            groups,
            0.0,
            6.0,
        ),
    )


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_opcheck_composite_ops(dtype):
    x = torch.randn(3, 8, 5, 4, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.dn_mmdet.moments.default, (x,))
    alpha = torch.randn(3, 8, requires_grad=True)
    lam = torch.randn(1, 8, requires_grad=True)
    torch.library.opcheck(
        torch.ops.dn_mmdet.normalize_affine.default,
        (x, torch.randn(8), torch.rand(8) + 0.5, alpha, lam, 1e-5, 0.0, 6.0),
    )


def test_train_op_gradients_in_float64():
    x, w1, b1, w2, *rest = train_args(torch.float64)

    def y(x, w1, b1, w2):
        return torch.ops.dn_mmdet.dn_b_train(x, w1, b1, w2, *rest)[0]

    assert torch.autograd.gradcheck(y, (x, w1, b1, w2))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('g', [1, 2, 'oup'])
@pytest.mark.parametrize(
    'bounds', [(-INF, INF), (0.0, INF), (0.0, 6.0), (-0.5, 0.7)]
)
def test_inference_op_equals_reference(dtype, g, bounds):
    torch.manual_seed(2)
    dn = DynamicNorm2d(24, r=4, g=g).to(dtype).eval()
    with torch.no_grad():
        for t in list(dn.parameters()) + [dn.bn.running_mean]:
            t.normal_(0, 0.5)
        dn.bn.running_var.uniform_(0.5, 1.5)
    x = (torch.randn(4, 24, 9, 7) * 1.5 + 0.3).to(dtype)
    with torch.no_grad(), torch.profiler.profile() as prof:
        y = dn.forward_clamped(x, bounds)
    names = [e.name for e in prof.events() if e.name.startswith('dn_')]
    assert names == ['dn_mmdet::dn_b_inference']  # all of DN-B, one op
    with torch.no_grad():
        expected = dynamic_norm_reference(copy.deepcopy(dn), x).clamp(*bounds)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_clamp_keeps_nan_and_bounds():
    """With FC2 at zero, unit statistics and eps 0, the op is the clamp;
    a NaN stays NaN (its sample's pooled mean is NaN too)."""
    x = torch.tensor(
        [[-3.0, -0.25, 0.5, 7.0, 1.0], [-1.0, 0.0, 1.0, 2.0, float('nan')]]
    ).view(2, 1, 1, 5)
    one, zero = torch.ones(1), torch.zeros(1)
    args = (
        torch.ones(1, 1),
        one,
        torch.zeros(2, 1),
        1,
        one,
        zero,
        zero,
        one,
        0.0,
    )
    y = torch.ops.dn_mmdet.dn_b_inference(x, *args, 0.0, 6.0)
    assert y[0].flatten().tolist() == [0.0, 0.0, 0.5, 6.0, 1.0]
    assert torch.isnan(y[1]).all()
    y = torch.ops.dn_mmdet.dn_b_inference(x, *args, -INF, 1.0)
    assert y[0].flatten().tolist() == [-3.0, -0.25, 0.5, 1.0, 1.0]


def test_kernel_rejects_mismatched_parameters():
    ops = torch.ops.dn_mmdet
    x = torch.randn(2, 3, 4, 4)
    c = torch.ones(3)
    with pytest.raises(RuntimeError, match='do not fit 3 channels'):
        ops.dn_b_inference(
            x,
            torch.ones(1, 4),
            torch.ones(1),
            torch.ones(6, 1),
            1,
            c,
            c,
            c,
            c,
            1e-5,
            0.0,
            6.0,
        )
    with pytest.raises(RuntimeError, match="x's dtype"):
        ops.dn_b_inference(
            x,
            torch.ones(1, 3).double(),
            torch.ones(1),
            torch.ones(6, 1),
            1,
            c,
            c,
            c,
            c,
            1e-5,
            0.0,
            6.0,
        )
    with pytest.raises(RuntimeError, match='mean and var must be'):
        ops.dn_b_inference(
            x,
            torch.ones(1, 3),
            torch.ones(1),
            torch.ones(6, 1),
            1,
            c,
            c,
            c.double(),
            c,
            1e-5,
            0.0,
            6.0,
        )
    with pytest.raises(RuntimeError, match='do not fit 3 channels'):
        ops.dn_b_train(
            x,
            torch.ones(1, 4),
            torch.ones(1),
            torch.ones(6, 1),
            1,
            c,
            c,
            1e-5,
            -INF,
            INF,
        )
    saved = ops.dn_b_train(
        x,
        torch.ones(1, 3),
        torch.ones(1),
        torch.ones(6, 1),
        1,
        c,
        c,
        1e-5,
        -INF,
        INF,
    )
    _, mean, _, *rest = saved
    with pytest.raises(RuntimeError, match='grad_y must be'):
        ops.dn_b_train_backward(
            x[:1],
            x,
            mean,
            *rest,
            torch.ones(1, 3),
            torch.ones(6, 1),
            1,
            -INF,
            INF,
        )


def test_build_failure_warns_once_and_falls_back(monkeypatch):

    def no_compiler():
        raise OSError('no C++ compiler')

    monkeypatch.setattr(dn_cpu, 'library', None)
    monkeypatch.setattr(dn_cpu, 'error', None)
    monkeypatch.setattr(dn_cpu, '_find_or_build', no_compiler)
    torch.manual_seed(7)
    dn = DynamicNorm2d(8).eval()
    x = torch.randn(2, 8, 4, 4)
    with pytest.warns(UserWarning, match='no C.. compiler'):
        with torch.no_grad(), torch.profiler.profile() as prof:
            y = dn(x)
    assert 'no C++ compiler' in dn_cpu.error
    assert 'dn_mmdet::normalize_affine' in {e.name for e in prof.events()}
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # not again
        with torch.no_grad():
            torch.testing.assert_close(dn(x), y)
    with torch.no_grad():
        expected = dynamic_norm_reference(copy.deepcopy(dn), x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
