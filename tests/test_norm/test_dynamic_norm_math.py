"""DN's arithmetic: the formulas of the paper, both implementations (the
C++ op and the composite), gradients."""

import copy

import pytest
import torch
from dn_helpers import CLAMPS, SHAPES, randomize, recorded_dn_ops

from dn_mmdet.norm import DynamicNorm2d, GroupedFC, SCModule, fc2_groups
from dn_mmdet.norm.reference import dynamic_norm_reference

#: DN's implementations (``impl``): the C++ op where it applies, or the
#: composite (as on CUDA, in half precision, channels-last).
IMPLS = ['auto', 'composite']


def sc_formula(dn, z):
    """FC1 -> sigmoid -> grouped FC2 (DN Sec. 3.2), in float64."""
    fc1, fc2 = dn.sc.fc1, dn.sc.fc2
    hid = torch.sigmoid(z @ fc1.weight.double().t() + fc1.bias.double())
    groups = fc2.groups
    w = fc2.weight.double()  # (2C, h / groups)
    outs = []
    out_per_group = w.shape[0] // groups
    in_per_group = hid.shape[1] // groups
    for k in range(groups):
        hk = hid[:, k * in_per_group : (k + 1) * in_per_group]
        wk = w[k * out_per_group : (k + 1) * out_per_group]
        outs.append(hk @ wk.t())
    out = torch.cat(outs, 1)
    c = dn.num_features
    return out[:, :c], out[:, c:]


def dn_formula(dn, x, training):
    """Y = X~ * alpha + lambda, in float64, from the paper's equations 6
    and 7 (DN Sec. 3.3)."""
    x = x.double()
    eps = dn.eps
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean = dn.bn.running_mean.double()
        var = dn.bn.running_var.double()
    x_tilde = (x - mean[:, None, None]) / (var[:, None, None] + eps).sqrt()
    if dn.mode == 'B':
        a, lam_sc = sc_formula(dn, x.mean(dim=(2, 3)))
    else:
        std = (var + eps).sqrt()
        if dn.mode == 'C1':
            fc1 = dn.sc.fc1
            pre = (
                mean[None] @ fc1.weight.double().t()
                + fc1.bias.double()
                + std[None] @ fc1.weight.double().t()
                + fc1.bias.double()
            )
            hid = torch.sigmoid(pre)
            # fc2 applied to a given hidden vector, through the helper
            a, lam_sc = sc_formula_from_hidden(dn, hid)
        else:
            a1, l1 = sc_formula(dn, mean[None])
            a2, l2 = sc_formula(dn, std[None])
            a, lam_sc = a1 + a2, l1 + l2
    alpha = a + dn.base_scale.double()
    lam = lam_sc + dn.base_shift.double()
    return x_tilde * alpha[:, :, None, None] + lam[:, :, None, None]


def sc_formula_from_hidden(dn, hid):
    fc2 = dn.sc.fc2
    groups = fc2.groups
    w = fc2.weight.double()
    out_per_group = w.shape[0] // groups
    in_per_group = hid.shape[1] // groups
    out = torch.cat(
        [
            hid[:, k * in_per_group : (k + 1) * in_per_group]
            @ w[k * out_per_group : (k + 1) * out_per_group].t()
            for k in range(groups)
        ],
        1,
    )
    c = dn.num_features
    return out[:, :c], out[:, c:]


@pytest.mark.parametrize('mode', ['B', 'C1', 'C2'])
@pytest.mark.parametrize('g', [1, 2, 'oup'])
@pytest.mark.parametrize('training', [True, False])
def test_matches_paper_formula_float64(mode, g, training):
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(48, r=8, g=g, mode=mode)).double()
    dn.train(training)
    x = torch.randn(4, 48, 7, 5, dtype=torch.float64) * 2 + 0.5
    expected = dn_formula(dn, x, training)
    torch.testing.assert_close(dn(x), expected, rtol=1e-10, atol=1e-10)


def test_running_stats_follow_batchnorm():
    """Biased variance to normalise, unbiased running var, torch momentum."""
    torch.manual_seed(0)
    for momentum in (0.1, 0.3, None):
        dn = DynamicNorm2d(16, momentum=momentum)
        bn = torch.nn.BatchNorm2d(16, momentum=momentum, affine=False)
        for _ in range(3):
            x = torch.randn(5, 16, 6, 6) * 3 + 1
            dn(x)
            bn(x)
        torch.testing.assert_close(dn.bn.running_mean, bn.running_mean)
        torch.testing.assert_close(dn.bn.running_var, bn.running_var)
        assert int(dn.bn.num_batches_tracked) == 3


def test_fresh_layer_is_batchnorm_with_unit_affine():
    torch.manual_seed(0)
    x = torch.randn(6, 32, 9, 9)
    dn, bn = DynamicNorm2d(32, g='oup'), torch.nn.BatchNorm2d(32)
    torch.testing.assert_close(dn(x), bn(x), rtol=1e-5, atol=1e-5)
    dn.eval(), bn.eval()
    torch.testing.assert_close(dn(x), bn(x), rtol=1e-5, atol=1e-5)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(8, track_running_stats=False)).eval()
    x = torch.randn(3, 8, 4, 4)
    assert dn.bn.running_mean is None
    torch.testing.assert_close(
        dn(x), dn_formula(dn, x, training=True).float(), rtol=1e-5, atol=1e-5
    )


def fast_and_reference_grads(dn_fast, dn_ref, x, channels_last=False):
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    if channels_last:
        x1 = x1.to(memory_format=torch.channels_last).detach().requires_grad_()
    y1 = dn_fast(x1)
    y2 = dynamic_norm_reference(dn_ref, x2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    y2.backward(grad)
    return (y1, x1.grad, [p.grad for p in dn_fast.parameters()]), (
        y2,
        x2.grad,
        [p.grad for p in dn_ref.parameters()],
    )


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('g', [1, 'oup'])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('impl', IMPLS)
def test_fast_path_equals_reference(
    shape, dtype, training, g, channels_last, impl
):
    torch.manual_seed(1)
    dn_fast = randomize(DynamicNorm2d(shape[1], g=g, impl=impl)).to(dtype)
    dn_ref = copy.deepcopy(dn_fast)
    dn_fast.train(training), dn_ref.train(training)
    x = (torch.randn(shape) * 1.5 + 0.3).to(dtype)
    (y1, gx1, gp1), (y2, gx2, gp2) = fast_and_reference_grads(
        dn_fast, dn_ref, x, channels_last
    )
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1, y2, **tol)
    torch.testing.assert_close(gx1, gx2, **tol)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(
        dn_fast.bn.running_mean, dn_ref.bn.running_mean, **tol
    )
    torch.testing.assert_close(
        dn_fast.bn.running_var, dn_ref.bn.running_var, **tol
    )


def test_impl_option_chooses_what_the_profiler_shows():
    """Training on the CPU is one op, ``dn_mmdet::dn_b_train`` (forward)
    and ``dn_mmdet::dn_b_train_backward``; ``impl='composite'`` computes
    the same with the composite ops; ``impl='op'`` refuses, naming why,
    what the op cannot compute."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    dn = DynamicNorm2d(16, impl='op')
    with recorded_dn_ops() as ops:
        y = dn(x)
        y.sum().backward()
    assert ops == ['dn_mmdet::dn_b_train', 'dn_mmdet::dn_b_train_backward']
    dn.impl = 'composite'
    with recorded_dn_ops() as ops:
        y_composite = dn(x)
    assert ops == ['dn_mmdet::moments', 'dn_mmdet::normalize_affine']
    torch.testing.assert_close(y_composite, y)
    dn.impl = 'op'
    dn.layer_name = 'neck.dn'
    with pytest.raises(ValueError, match='"neck.dn".*channels-last'):
        dn(x.to(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match='"neck.dn".*float32/float64 CPU'):
        dn(x.half())
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        DynamicNorm2d(16, impl='fast')


@pytest.mark.parametrize('mode', ['B', 'C1', 'C2'])
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('act', ['none', 'relu6'])
def test_gradcheck(mode, impl, act):
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(6, r=2, g=1, mode=mode, impl=impl)).double()
    x = torch.randn(3, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    params = list(dn.sc.parameters())

    def fn(x, *ps):
        return dn.forward_clamped(x, CLAMPS[act])

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)
    dn.eval()
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    'channels,r,g',
    [
        (7, 1, 'oup'),  # 14 FC2 rows: three blocks of four and two left over
        (9, 3, 1),  # groups of 6 rows: the blocks stop at the first group edge
        (12, 2, 2),  # groups of 8 rows: blocks within each group
        (33, 4, 2),  # odd C, 8 hidden units in 4 groups
        (40, 4, 'oup'),
        (384, 1, 'oup'),
    ],
)  # over 2^18 multiply-adds: BLAS products both ways
def test_kernel_sc_module_matches_reference(channels, r, g):
    """The C++ op's SC-Module (its FCs run four rows at a time where the
    rows share their inputs, as loops below 2^18 multiply-adds and as BLAS
    products above) equals the paper's formula, in training (gradients
    included) and in eval, for FC shapes that leave rows over."""
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(channels, r=r, g=g))
    ref = copy.deepcopy(dn)
    x = torch.randn(3, channels, 5, 6)
    with recorded_dn_ops() as ops:
        (y, gx, gp), (y_ref, gx_ref, gp_ref) = fast_and_reference_grads(
            dn, ref, x
        )
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)
    for a, b in zip(gp, gp_ref):
        torch.testing.assert_close(a, b, **tol)
    dn.eval(), ref.eval()
    with torch.no_grad(), recorded_dn_ops() as eval_ops:
        torch.testing.assert_close(
            dn(x), dynamic_norm_reference(ref, x), **tol
        )
    assert ops == ['dn_mmdet::dn_b_train', 'dn_mmdet::dn_b_train_backward']
    assert eval_ops == ['dn_mmdet::dn_b_inference']


@pytest.mark.parametrize(
    'act', [torch.nn.ReLU(), torch.nn.ReLU6(), torch.nn.Hardtanh(-0.5, 0.5)]
)
def test_kernel_backward_through_fused_clamp_matches_torch(act):
    """The C++ op's backward through its fused clamp (a vectorised bit mask)
    gives what DN and then the clamp give in torch: the gradient passes
    strictly inside the clamp's range, and NaN or inf gradients where the
    clamp cuts are zeroed, as torch's clamp backward zeroes them. 63 values
    a plane: the loops' vector body and their tail both run."""
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(24, g='oup'))
    ref = copy.deepcopy(dn)
    bounds = (
        (0.0, float('inf'))
        if type(act) is torch.nn.ReLU
        else (act.min_val, act.max_val)
    )
    x = torch.randn(3, 24, 7, 9) * 1.5 + 0.3
    x_kernel = x.clone().requires_grad_(True)
    x_torch = x.clone().requires_grad_(True)
    y_kernel = dn.forward_clamped(x_kernel, bounds)
    y_torch = act(dynamic_norm_reference(ref, x_torch))
    torch.testing.assert_close(y_kernel, y_torch, rtol=1e-5, atol=1e-5)
    cut = (
        y_torch.detach() <= act.min_val
        if isinstance(act, torch.nn.Hardtanh)
        else y_torch.detach() <= 0
    )
    if isinstance(act, torch.nn.Hardtanh):
        cut |= y_torch.detach() >= act.max_val
    assert 0 < cut.float().mean() < 1
    grad = torch.randn_like(x)
    bad = cut & (torch.rand_like(x) < 0.3)
    grad[bad] = torch.tensor([float('nan'), float('inf')]).repeat(
        int(bad.sum())
    )[: int(bad.sum())]
    with recorded_dn_ops() as ops:
        y_kernel.backward(grad)
    y_torch.backward(grad)
    assert ops == ['dn_mmdet::dn_b_train_backward']
    assert torch.isfinite(x_kernel.grad).all()
    torch.testing.assert_close(
        x_kernel.grad, x_torch.grad, rtol=1e-4, atol=1e-4
    )
    for p_kernel, p_torch in zip(dn.sc.parameters(), ref.sc.parameters()):
        torch.testing.assert_close(
            p_kernel.grad, p_torch.grad, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_kernel_gives_the_same_bits_on_one_thread_and_on_two(dtype):
    """The C++ op splits its passes over threads by whole planes, and each
    plane's loop is one out-of-line function, so two threads compute every
    sum in the same order as one: forward, backward and eval agree bit for
    bit (the rest of the suite runs the training op on one thread).
    2x16x64x64 with a ReLU6: 8 planes a task, the clamp's mask in every
    loop."""
    torch.manual_seed(0)
    plain = randomize(DynamicNorm2d(16, g='oup')).to(dtype)
    dn = copy.deepcopy(plain)
    x = torch.randn(2, 16, 64, 64, dtype=dtype) * 2
    grad = torch.randn_like(x)

    def run(threads):
        torch.set_num_threads(threads)
        try:
            layer = copy.deepcopy(dn).train()
            x_in = x.clone().requires_grad_(True)
            y = layer.forward_clamped(x_in, (0.0, 6.0))
            y.backward(grad)
            with torch.no_grad():
                y_eval = layer.eval().forward_clamped(x, (0.0, 6.0))
            return [
                y,
                x_in.grad,
                y_eval,
                layer.bn.running_var,
                *(p.grad for p in layer.sc.parameters()),
            ]
        finally:
            torch.set_num_threads(1)

    with recorded_dn_ops() as ops:
        one, two = run(1), run(2)
    assert ops == sorted(
        [
            'dn_mmdet::dn_b_train',
            'dn_mmdet::dn_b_inference',
            'dn_mmdet::dn_b_train_backward',
        ]
        * 2
    )
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    y_ref = torch.nn.functional.relu6(dynamic_norm_reference(plain, x))
    torch.testing.assert_close(two[0], y_ref, rtol=1e-5, atol=1e-5)


def test_eval_is_per_sample_and_batch_size_one_works():
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(32, g='oup')).eval()
    x = torch.randn(5, 32, 6, 6)
    full = dn(x)
    for i in range(5):
        torch.testing.assert_close(
            dn(x[i : i + 1]), full[i : i + 1], rtol=1e-6, atol=1e-6
        )
    # another batch around the same sample changes nothing for it
    other = torch.cat([x[:1], torch.randn(3, 32, 6, 6) * 10])
    torch.testing.assert_close(dn(other)[:1], full[:1], rtol=1e-6, atol=1e-6)


def test_dn_b_is_per_sample_affine_dn_c_batch_shared():
    """DN-B: a sample's affine follows its own input; DN-C: one affine for
    the batch."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 5, 5)
    for mode in ('B', 'C1'):
        dn = randomize(DynamicNorm2d(16, mode=mode)).eval()
        y = dn(x)
        mean = dn.bn.running_mean[None, :, None, None]
        x_tilde = (x - mean) / (
            dn.bn.running_var[None, :, None, None] + dn.eps
        ).sqrt()
        # recover the affine per sample by least squares on two pixels
        a = (y[:, :, 0, 0] - y[:, :, 0, 1]) / (
            x_tilde[:, :, 0, 0] - x_tilde[:, :, 0, 1]
        )
        if mode == 'B':
            assert not torch.allclose(a[0], a[1], atol=1e-4)
        else:
            torch.testing.assert_close(a[0], a[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    'channels,r,g,hidden,groups',
    [
        (32, 16, 1, 2, 2),
        (96, 16, 'oup', 6, 1),
        (24, 16, 2, 1, 1),  # h=1 < g: one group
        (144, 16, 2, 9, 3),  # h odd: largest valid group count below 9 // 2
        (144, 16, 4, 9, 1),
        (8, 32, 1, 1, 1),  # C < r: h = max(1, C // r)
    ],
)
def test_sc_module_structure(channels, r, g, hidden, groups):
    sc = SCModule(channels, r=r, g=g)
    assert sc.fc1.weight.shape == (hidden, channels)
    assert sc.fc1.bias.shape == (hidden,)
    assert sc.fc2.bias is None
    assert sc.fc2.groups == groups == fc2_groups(hidden, channels, g)
    assert sc.fc2.weight.shape == (2 * channels, hidden // groups)
    assert torch.count_nonzero(sc.fc2.weight) == 0


def test_grouped_fc_equals_grouped_conv():
    torch.manual_seed(0)
    for in_f, out_f, groups in [(6, 12, 3), (6, 12, 6), (4, 8, 1), (6, 12, 2)]:
        fc = GroupedFC(in_f, out_f, groups, bias=True)
        conv = torch.nn.Conv2d(in_f, out_f, 1, groups=groups, bias=True)
        with torch.no_grad():
            conv.weight.copy_(fc.weight[:, :, None, None])
            conv.bias.copy_(fc.bias)
        z = torch.randn(5, in_f)
        torch.testing.assert_close(
            fc(z), conv(z[:, :, None, None])[:, :, 0, 0]
        )


@pytest.mark.parametrize('impl', IMPLS)
def test_statistics_stay_accurate_for_large_means(impl):
    """float32 activations with |mean| = 10 std: both implementations keep
    the variance to 1e-4."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, 16) * 0.5 + 5.0
    dn = DynamicNorm2d(8, momentum=1.0, impl=impl)
    x.requires_grad_(True)
    y = dn(x)
    expected_var = x.detach().double().var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(
        dn.bn.running_var.double(), expected_var, rtol=1e-4, atol=0
    )
    # normalised output: zero mean, unit variance per channel
    yd = y.detach().double()
    torch.testing.assert_close(
        yd.mean(dim=(0, 2, 3)),
        torch.zeros(8, dtype=torch.float64),
        rtol=0,
        atol=1e-3,
    )
    torch.testing.assert_close(
        yd.var(dim=(0, 2, 3), unbiased=False),
        torch.ones(8, dtype=torch.float64),
        rtol=1e-3,
        atol=0,
    )
