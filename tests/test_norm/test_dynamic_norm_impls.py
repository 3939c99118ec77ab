"""Every implementation of DN against the reference, and what a careful user
can observe: the profiler's op names, ``torch.func.functional_call``,
large channel means, half precision (torch's global hook registries: in a
fresh process, tests/test_reliability/test_process_state.py).

The matrix: implementation (``impl='auto'``: the C++ op where it applies;
``'composite'``) x dtype x train / train without autograd / eval without
autograd / eval with autograd x memory format x clamp (a fused ReLU6 or
none): outputs, input and parameter gradients, running statistics.
"""

import copy

import pytest
import torch
from dn_helpers import CLAMPS, SETTINGS, forward_in, randomize, recorded_dn_ops

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.reference import dynamic_norm_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
#: Closeness to the float64 reference, by dtype: float16 and bfloat16 round
#: the input, the weights and the output (BN's own error is as large).
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float16: dict(rtol=1e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=8e-2),
}


def expected_ops(impl, dtype, setting, channels_last):
    training, autograd = SETTINGS[setting]
    if (
        impl == 'auto'
        and dtype in (torch.float32, torch.float64)
        and not channels_last
        and (training or not autograd)
    ):
        ops = [
            'dn_mmdet::dn_b_train' if training else 'dn_mmdet::dn_b_inference'
        ]
        return ops + (['dn_mmdet::dn_b_train_backward'] if autograd else [])
    return (['dn_mmdet::moments'] if training else []) + [
        'dn_mmdet::normalize_affine'
    ]


@pytest.mark.parametrize('impl', ['auto', 'composite'])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('setting', list(SETTINGS))
@pytest.mark.parametrize(
    'channels_last', [False, True], ids=['contiguous', 'channels_last']
)
@pytest.mark.parametrize('clamp', ['none', 'relu6'])
def test_every_implementation_equals_the_reference(
    impl, dtype, setting, channels_last, clamp
):
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(16, r=4, g=2, impl=impl)).to(dtype)
    ref = copy.deepcopy(dn).double()
    x = (torch.randn(3, 16, 5, 4) * 1.5 + 0.5).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    training, autograd = SETTINGS[setting]
    with recorded_dn_ops() as ops:
        y = forward_in(dn, x, setting, clamp)
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        if autograd:
            y.backward(grad.to(dtype))
    assert ops == expected_ops(impl, dtype, setting, channels_last)
    assert y.dtype == dtype
    assert y.is_contiguous(
        memory_format=torch.channels_last
        if channels_last
        else torch.contiguous_format
    )
    ref.train(training)
    x_ref = x.detach().double().requires_grad_(autograd)
    y_ref = dynamic_norm_reference(ref, x_ref).clamp(*CLAMPS[clamp])
    tol = TOL[dtype]
    torch.testing.assert_close(y.detach().double(), y_ref.detach(), **tol)
    for name, buf in dn.bn.named_buffers():
        torch.testing.assert_close(
            buf.double(), ref.bn.get_buffer(name).double(), **tol
        )
    if autograd:
        y_ref.backward(grad.double())
        torch.testing.assert_close(x.grad.double(), x_ref.grad, **tol)
        for (name, p), p_ref in zip(dn.named_parameters(), ref.parameters()):
            torch.testing.assert_close(
                p.grad.double(), p_ref.grad, **tol, msg=name
            )


def test_functional_call_uses_the_weights_it_is_given():
    """``torch.func.functional_call`` with other weights answers with those
    (main answered with the layer's own, off by 7.95), and plain calls after
    it with the layer's own."""
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(16, r=4)).eval()
    other = randomize(copy.deepcopy(dn), seed=5)
    with torch.no_grad():
        other.bn.running_mean.add_(3.0)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        dn(x)  # a first call, which main cached
        state = dict(other.named_parameters(), **dict(other.named_buffers()))
        y_other = torch.func.functional_call(dn, state, (x,))
        y_own = dn(x)
        torch.testing.assert_close(
            y_other, dynamic_norm_reference(other, x), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            y_own, dynamic_norm_reference(dn, x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize('mean', [1e3, 1e4])
@pytest.mark.parametrize('impl', ['auto', 'composite'])
def test_large_channel_means_as_accurate_as_batchnorm(mean, impl):
    """A fresh DN (alpha 1, lambda 0) is BN without affine: its output and
    running variance stay within BN's error at channel means of 1e3 and 1e4
    (main's composite path was off by 0.1-0.2, and its running variance by
    109% at 1e4). Channels-last input: the composite under 'auto'."""
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 16, 16) + mean).to(
        memory_format=torch.channels_last
    )
    dn = DynamicNorm2d(8, momentum=1.0, impl=impl)
    bn = torch.nn.BatchNorm2d(8, momentum=1.0, affine=False)
    truth = torch.nn.BatchNorm2d(8, momentum=1.0, affine=False).double()
    y_true = truth(x.double())
    y_dn, y_bn = dn(x).double(), bn(x).double()
    bn_error = (y_bn - y_true).abs().max()
    assert (y_dn - y_true).abs().max() <= max(2 * bn_error, 1e-4)
    torch.testing.assert_close(
        dn.bn.running_var.double(), truth.running_var, rtol=1e-3, atol=0
    )
    torch.testing.assert_close(
        dn.bn.running_mean.double(), truth.running_mean, rtol=1e-6, atol=0
    )


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_model_trains_as_batchnorm_does(dtype):
    """``.half()`` / ``.bfloat16()`` DN models train (main: a dtype error),
    as BN models do on the CPU."""
    torch.manual_seed(0)
    bn_model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
    ).to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    bn_model(x).float().square().mean().backward()  # BN does
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), DynamicNorm2d(8, r=2)
    ).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = model(x).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    dn = model[1]
    assert dn.sc.fc2.weight.grad.dtype == dtype
    assert dn.sc.fc2.weight.abs().sum() > 0  # it learned
    assert dn.bn.running_var.dtype == dtype
    assert int(dn.bn.num_batches_tracked) == 2


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_float32_model_in_eval_takes_half_input_as_batchnorm_does(dtype):
    """A float32 model in eval accepts float16/bfloat16 input and answers in
    that dtype (main: 'mat1 and mat2 must have the same dtype'), as BN."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    bn = torch.nn.BatchNorm2d(8).eval()
    assert bn(x.to(dtype)).dtype == dtype  # what BN does
    dn = randomize(DynamicNorm2d(8, r=2)).eval()
    with torch.no_grad():
        y = dn(x.to(dtype))
        expected = dn(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, **TOL[dtype])


@pytest.mark.parametrize(
    'swap', ['assignment', 'load_state_dict', '_apply', 'in_place']
)
def test_every_way_of_swapping_weights_is_seen_by_the_next_call(swap):
    """After a first eval call (which main cached), each way of giving the
    layer other weights or statistics changes the next call: it computes
    what the reference computes from the layer's tensors as they now are."""
    torch.manual_seed(0)
    dn = randomize(DynamicNorm2d(16, r=4)).eval()
    other = randomize(copy.deepcopy(dn), seed=5)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        before = dn(x)
        if swap == 'assignment':
            dn.sc.fc1.weight = other.sc.fc1.weight
            dn.bn.running_mean = other.bn.running_mean
        elif swap == 'load_state_dict':
            dn.load_state_dict(other.state_dict())
        elif swap == '_apply':  # new tensors (float64), new values
            dn.double()
            dn.sc.fc2.weight.mul_(2.0)
            x = x.double()
        else:
            dn.bn.running_var.mul_(3.0)
        y = dn(x)
        assert not torch.allclose(y.float(), before)
        expected = dynamic_norm_reference(copy.deepcopy(dn), x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
