"""DN inference: the C++ CPU kernel and the fused activation.

Without autograd DN normalises, applies its per-sample affine and the
ReLU/ReLU6 that follows it in one pass of the C++ kernel (dn_mmdet.ops);
these tests hold that pass to the straightforward reference implementation.
"""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
from dn_helpers import (ACTIVATIONS, SHAPES, randomize, reference_output,
                        with_activation)
from mmcv.cnn import ConvModule

import dn_mmdet  # noqa: F401  (registers DN and the backbone)
from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.functional import activation_bounds, normalize_act_cpu
from dn_mmdet.norm.reference import dynamic_norm_reference
from dn_mmdet.ops import dn_cpu


@pytest.fixture(scope='module', autouse=True)
def default_threads(torch_threads):
    """torch's default thread count here (the suite runs one): the kernel
    splits its work over threads (at::parallel_for) as it does in use."""
    torch.set_num_threads(torch_threads)
    yield
    torch.set_num_threads(1)


def test_cpu_kernel_builds_and_loads():
    """This machine has a C++ compiler (mmcv is built from source), so the
    fast inference path must be the one in use."""
    assert dn_cpu.load()
    assert dn_cpu.error is None
    assert dn_cpu.origin in ('installed', 'cache', 'compiled')


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('g', [1, 2, 'oup'])
@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_inference_equals_reference(shape, dtype, g, act, counted_kernel):
    torch.manual_seed(2)
    dn = with_activation(randomize(DynamicNorm2d(shape[1], r=4, g=g)), act)
    dn = dn.to(dtype).eval()
    x = (torch.randn(shape) * 1.5 + 0.3).to(dtype)
    with torch.no_grad():
        y = dn(x)
        expected = reference_output(dn, x)
    # all of DN-B in one call of the C++ op
    assert counted_kernel.dn_b_calls == 1 and counted_kernel.calls == 1
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['C1', 'C2'])
def test_dn_c_inference_equals_reference(mode, counted_kernel):
    torch.manual_seed(3)
    dn = with_activation(randomize(DynamicNorm2d(24, mode=mode)), 'relu6')
    dn.eval()
    x = torch.randn(3, 24, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(dn(x), reference_output(dn, x),
                                   rtol=1e-5, atol=1e-5)
    assert counted_kernel.calls == 1


def test_other_sc_activation_takes_normalize_act(counted_kernel):
    """dn_b_inference computes the SC-Module with its sigmoid; another
    activation runs the SC-Module in torch, then the one-pass kernel."""
    torch.manual_seed(10)
    dn = randomize(DynamicNorm2d(32, act_cfg=dict(type='ReLU'))).eval()
    dn = with_activation(dn, 'relu6')
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(dn(x), reference_output(dn, x),
                                   rtol=1e-5, atol=1e-5)
    assert counted_kernel.dn_b_calls == 0 and counted_kernel.calls == 1


def test_hooks_on_the_sc_module_still_fire(counted_kernel):
    torch.manual_seed(11)
    dn = randomize(DynamicNorm2d(32)).eval()
    x = torch.randn(2, 32, 5, 5)
    seen = []
    handle = dn.sc.fc1.register_forward_hook(
        lambda m, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        torch.testing.assert_close(dn(x), reference_output(dn, x),
                                   rtol=1e-5, atol=1e-5)
    assert seen[0] == (2, 2)  # the hook ran on DN's own forward
    assert counted_kernel.dn_b_calls == 0 and counted_kernel.calls == 1
    handle.remove()
    with torch.no_grad():
        dn(x)
    assert counted_kernel.dn_b_calls == 1


def test_batch_statistics_without_autograd(counted_kernel):
    """Training mode under no_grad (e.g. a statistics refresh): the kernel
    normalises with the batch statistics and the running ones update."""
    torch.manual_seed(4)
    dn = with_activation(randomize(DynamicNorm2d(16, g='oup')), 'relu')
    ref = copy.deepcopy(dn)
    x = torch.randn(4, 16, 6, 6) * 2 + 1
    with torch.no_grad():
        y = dn(x)
        expected = reference_output(ref, x)
    assert counted_kernel.calls == 1
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # reference_output ran on a copy of ref: update ref's own statistics
    with torch.no_grad():
        dynamic_norm_reference(ref, x)
    torch.testing.assert_close(dn.bn.running_mean, ref.bn.running_mean)
    torch.testing.assert_close(dn.bn.running_var, ref.bn.running_var)


@pytest.mark.parametrize('case', ['channels_last', 'autograd', 'bfloat16'])
def test_other_inputs_take_aten_and_agree(case, counted_kernel):
    torch.manual_seed(5)
    dn = with_activation(randomize(DynamicNorm2d(32, g='oup')), 'relu6')
    dn.eval()
    x = torch.randn(2, 32, 9, 9)
    expected = reference_output(dn, x).detach()
    tol = dict(rtol=1e-5, atol=1e-5)
    if case == 'channels_last':
        with torch.no_grad():
            y = dn(x.to(memory_format=torch.channels_last))
    elif case == 'autograd':
        y = dn(x.requires_grad_(True))
        y.sum().backward()
        assert x.grad is not None
        y = y.detach()
    else:
        with torch.no_grad():
            y = dn.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
        tol = dict(rtol=2e-2, atol=5e-2)
    assert counted_kernel.calls == 0
    torch.testing.assert_close(y, expected, **tol)


def test_inference_mode_and_disabling(monkeypatch, counted_kernel):
    torch.manual_seed(6)
    dn = with_activation(randomize(DynamicNorm2d(16)), 'relu6').eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.inference_mode():
        y = dn(x)
    assert counted_kernel.calls == 1
    monkeypatch.setenv('DN_MMDET_FUSED', '0')
    with torch.no_grad():
        y_aten = dn(x)
    assert counted_kernel.calls == 1
    torch.testing.assert_close(y, y_aten, rtol=1e-5, atol=1e-5)


def test_clamp_keeps_nan_and_bounds(counted_kernel):
    x = torch.tensor([-3.0, -0.25, 0.5, 7.0, float('nan')]).view(1, 1, 1, 5)
    one = torch.ones(1, 1)
    zero = torch.zeros(1)
    y = normalize_act_cpu(x, one, 0 * one, zero, zero + 1, 0.0, (0.0, 6.0))
    assert counted_kernel.calls == 1
    assert y[0, 0, 0, :4].tolist() == [0.0, 0.0, 0.5, 6.0]
    assert torch.isnan(y[0, 0, 0, 4])
    y = normalize_act_cpu(x, one, 0 * one, zero, zero + 1, 0.0, (None, 1.0))
    assert y[0, 0, 0, :4].tolist() == [-3.0, -0.25, 0.5, 1.0]


def test_kernel_rejects_mismatched_parameters():
    assert dn_cpu.load()
    ops = dn_cpu.module
    x = torch.randn(2, 3, 4, 4)
    ok = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="x's dtype"):
        ops.normalize_act(x, ok.double(), ok, ok[0], ok[0], 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match=r'\(N, C\) or \(1, C\)'):
        ops.normalize_act(x, torch.ones(2, 4), ok, ok[0], ok[0], 1e-5, 0.0,
                          6.0)
    c = torch.ones(3)
    with pytest.raises(RuntimeError, match='do not fit 3 channels'):
        ops.dn_b_inference(x, torch.ones(1, 4), torch.ones(1),
                           torch.ones(6, 1), 1, c, c, c, c, 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match="x's dtype"):
        ops.dn_b_inference(x, torch.ones(1, 3).double(), torch.ones(1),
                           torch.ones(6, 1), 1, c, c, c, c, 1e-5, 0.0, 6.0)
    with pytest.raises(RuntimeError, match="mean and var must be"):
        ops.dn_b_inference(x, torch.ones(1, 3), torch.ones(1),
                           torch.ones(6, 1), 1, c, c, c.double(), c, 1e-5,
                           0.0, 6.0)
    # the training halves
    inf = float('inf')
    with pytest.raises(RuntimeError, match='do not fit 3 channels'):
        ops.dn_b_train_forward(x, torch.ones(1, 4), torch.ones(1),
                               torch.ones(6, 1), 1, c, c, 1e-5, -inf, inf,
                               c, c, 0.1)
    with pytest.raises(RuntimeError, match='running statistics must be'):
        ops.dn_b_train_forward(x, torch.ones(1, 3), torch.ones(1),
                               torch.ones(6, 1), 1, c, c, 1e-5, -inf, inf,
                               c.double(), c, 0.1)
    saved = ops.dn_b_train_forward(x, torch.ones(1, 3), torch.ones(1),
                                   torch.ones(6, 1), 1, c, c, 1e-5, -inf,
                                   inf, c, c, 0.0)
    with pytest.raises(RuntimeError, match="grad_y must be"):
        ops.dn_b_train_backward(x[:1], x, *saved[1:], torch.ones(1, 3),
                                torch.ones(6, 1), 1, -inf, inf)


def test_build_failure_warns_once_and_falls_back(monkeypatch):

    def no_compiler():
        raise OSError('no C++ compiler')

    monkeypatch.setattr(dn_cpu, 'module', None)
    monkeypatch.setattr(dn_cpu, 'error', None)
    monkeypatch.setattr(dn_cpu, '_find_or_build', no_compiler)
    torch.manual_seed(7)
    dn = with_activation(randomize(DynamicNorm2d(8)), 'relu6').eval()
    x = torch.randn(2, 8, 4, 4)
    with pytest.warns(UserWarning, match='no C.. compiler'):
        with torch.no_grad():
            y = dn(x)
    assert 'no C++ compiler' in dn_cpu.error
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # not again
        with torch.no_grad():
            torch.testing.assert_close(dn(x), y)
    torch.testing.assert_close(y, reference_output(dn, x), rtol=1e-5,
                               atol=1e-5)


# --------------------------------------------------------------------- #
# Activation fusion
# --------------------------------------------------------------------- #
def conv_stack(norm_cfg, act_cfg=dict(type='ReLU6'), order=None):
    extra = {} if order is None else dict(order=order)
    return nn.Sequential(
        ConvModule(3, 16, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg,
                   **extra),
        ConvModule(16, 24, 1, norm_cfg=norm_cfg, act_cfg=None),
        ConvModule(24, 8, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg,
                   **extra))


@pytest.mark.parametrize('training', [True, False])
def test_fuse_activations_keeps_outputs_grads_and_keys(training,
                                                       monkeypatch):
    torch.manual_seed(8)
    model = conv_stack(dict(type='DN', g='oup'))
    for m in model.modules():
        if isinstance(m, DynamicNorm2d):
            randomize(m)
    fused = copy.deepcopy(model)
    # model stays unfused: its first forward runs with fusion off (in eval,
    # so that its statistics stay as they are)
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv('DN_MMDET_FUSED', '0')
        model.eval()(torch.randn(2, 3, 4, 4))
    assert isinstance(model[0].activate, nn.ReLU6)
    assert DynamicNorm2d.fuse_activations(fused) == 2
    assert isinstance(fused[0].activate, nn.Identity)
    assert isinstance(fused[0].norm.activation, nn.ReLU6)
    assert fused[1].norm.activation is None  # it had no activation
    assert list(fused.state_dict()) == list(model.state_dict())
    model.train(training), fused.train(training)
    x = torch.randn(3, 3, 10, 10)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = model(x1), fused(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    # fusing again finds nothing left to fuse
    assert DynamicNorm2d.fuse_activations(fused) == 0


def test_fuse_activations_only_where_exact():
    # act before norm, a non-clamp activation, a BN: nothing is fused
    assert DynamicNorm2d.fuse_activations(conv_stack(
        dict(type='DN'), order=('conv', 'act', 'norm'))) == 0
    assert DynamicNorm2d.fuse_activations(conv_stack(
        dict(type='DN'), act_cfg=dict(type='SiLU'))) == 0
    bn_model = conv_stack(dict(type='BN'))
    assert DynamicNorm2d.fuse_activations(bn_model) == 0
    assert isinstance(bn_model[0].activate, nn.ReLU6)


def test_fuse_activation_errors_name_the_layer():
    dn = DynamicNorm2d(8)
    dn.layer_name = 'neck.conv1.dn'
    with pytest.raises(ValueError, match='neck.conv1.dn.*SiLU'):
        dn.fuse_activation(nn.SiLU())
    dn.fuse_activation(nn.ReLU())
    with pytest.raises(ValueError, match='already has'):
        dn.fuse_activation(nn.ReLU6())


def test_activation_bounds():
    assert activation_bounds(nn.ReLU()) == (0.0, None)
    assert activation_bounds(nn.ReLU6()) == (0.0, 6.0)
    assert activation_bounds(nn.Hardtanh(-2, 3)) == (-2.0, 3.0)
    assert activation_bounds(nn.GELU()) is None


def test_backbone_fuses_every_relu6_and_matches_unfused(counted_kernel):
    torch.manual_seed(9)
    model = MobileNetV2DN(norm_cfg=dict(type='DN', r=16, g=1))
    norms = [m for m in model.modules() if isinstance(m, DynamicNorm2d)]
    # stem, 17 depthwise, 16 expansion convs and conv_last have a ReLU6;
    # the 17 projection convs are linear
    assert sum(n.activation is not None for n in norms) == 35
    for n in norms:
        randomize(n)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
        assert counted_kernel.calls == 52
        for n in norms:
            # each DN layer computed by the reference implementation
            n.forward = lambda x, n=n: dynamic_norm_reference(n, x)
        reference = model(x)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
