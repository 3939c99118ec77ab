"""Switchable Normalization against its formulas (float64), its options and
its behaviour inside OpenMMLab models."""

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.optim import DefaultOptimWrapperConstructor

from dn_mmdet.norm import SwitchNorm2d
from dn_mmdet.norm.base import name_norm_layers

EPS = 1e-5


def sn_formula(x, mean_weight, var_weight, gamma, beta, eps=EPS, running=None):
    """SN as the paper and its reference code define it, on x viewed as
    (N, C, HW): instance mean and unbiased variance, layer and batch
    statistics from them, mixed by softmax weights.

    ``running``: None for training (batch scope from the batch), a pair
    (mean, var) of (C,) for eval; without a batch scope (two weights)
    it is unused. A 1x1 map's instance variance is taken as 0 (the module's
    documented choice; ``x.var`` of one value is NaN).

    Returns the output and the batch scope's (mean, var) (None in eval).
    """
    n, c = x.shape[:2]
    v = x.reshape(n, c, -1)
    mean_in = v.mean(-1, keepdim=True)
    var_in = (
        v.var(-1, keepdim=True)
        if v.shape[-1] > 1
        else torch.zeros_like(mean_in)
    )
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in**2
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    batch = None
    if len(mean_weight) == 3:
        if running is None:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            batch = (mean_bn.reshape(c), var_bn.reshape(c))
        else:
            mean_bn = running[0].reshape(1, c, 1)
            var_bn = running[1].reshape(1, c, 1)
        means.append(mean_bn)
        variances.append(var_bn)
    wm = torch.softmax(mean_weight, 0)
    wv = torch.softmax(var_weight, 0)
    mean = sum(w * m for w, m in zip(wm, means))
    var = sum(w * s for w, s in zip(wv, variances))
    y = ((v - mean) / (var + eps).sqrt()).reshape(x.shape)
    return y * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1), batch


def randomised(sn, seed=0):
    """Give ``sn`` (float64) random mixing logits, gamma and beta."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sn.mean_weight, sn.var_weight):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        sn.weight.copy_(
            1
            + 0.3
            * torch.randn(sn.num_features, generator=g, dtype=sn.weight.dtype)
        )
        sn.bias.copy_(
            0.3
            * torch.randn(sn.num_features, generator=g, dtype=sn.bias.dtype)
        )
    return sn


def input_like(shape, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Per-channel offsets and scales, as a conv output has.
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=dtype)
    scale = torch.rand(1, c, 1, 1, generator=g, dtype=dtype) * 2 + 0.5
    shift = torch.randn(1, c, 1, 1, generator=g, dtype=dtype)
    return (x * scale + shift).requires_grad_(True)


def check_against_formula(sn, x, running=None):
    """Output, input gradient and every parameter's gradient of ``sn``
    equal the formula's (autograd), in float64."""
    params = [sn.mean_weight, sn.var_weight, sn.weight, sn.bias]
    grad = torch.randn(
        x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype
    )
    y = sn(x)
    got = torch.autograd.grad(y, [x] + params, grad)
    y_ref, batch = sn_formula(x, *params, eps=sn.eps, running=running)
    expected = torch.autograd.grad(y_ref, [x] + params, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(
        ['x', 'mean_weight', 'var_weight', 'gamma', 'beta'], got, expected
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)
    return batch


SHAPES = [(4, 6, 5, 7), (2, 3, 1, 4), (1, 5, 3, 3), (3, 4, 1, 1)]


@pytest.mark.parametrize('impl', ['auto', 'plain'])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('using_bn', [True, False])
def test_training_matches_formula(impl, shape, using_bn):
    sn = randomised(
        SwitchNorm2d(shape[1], impl=impl, using_bn=using_bn).double().train()
    )
    x = input_like(shape)
    batch = check_against_formula(sn, x)
    assert torch.isfinite(x).all()
    if using_bn:
        # One step from the reference's zero start, keep factor 0.9.
        torch.testing.assert_close(sn.bn.running_mean, 0.1 * batch[0])
        torch.testing.assert_close(sn.bn.running_var, 0.1 * batch[1])
        assert int(sn.bn.num_batches_tracked) == 1
    else:
        assert sn.bn.running_mean is None
        assert not sn.uses_batch_statistics


@pytest.mark.parametrize('impl', ['auto', 'plain'])
@pytest.mark.parametrize('shape', SHAPES)
def test_eval_uses_running_batch_scope(impl, shape):
    c = shape[1]
    sn = randomised(SwitchNorm2d(c, impl=impl).double())
    running = (
        torch.randn(c, dtype=torch.float64),
        torch.rand(c, dtype=torch.float64) + 0.2,
    )
    sn.bn.running_mean.copy_(running[0])
    sn.bn.running_var.copy_(running[1])
    sn.eval()
    x = input_like(shape)
    check_against_formula(sn, x, running=running)
    # Per sample: a sample's output does not depend on the others.
    with torch.no_grad():
        alone = sn(x[:1])
        together = sn(x)
    torch.testing.assert_close(alone, together[:1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sn.bn.running_mean, running[0])
    torch.testing.assert_close(sn.bn.running_var, running[1])


def test_norm_eval_freezes_batch_scope_only():
    """Child ``bn`` in eval (what a backbone's norm_eval does): batch scope
    from the running estimates, no update, gradients still flow."""
    c = 4
    sn = randomised(SwitchNorm2d(c).double()).train()
    running = (
        torch.randn(c, dtype=torch.float64),
        torch.rand(c, dtype=torch.float64) + 0.2,
    )
    sn.bn.running_mean.copy_(running[0])
    sn.bn.running_var.copy_(running[1])
    sn.bn.eval()
    assert sn.training and not sn.uses_batch_statistics
    check_against_formula(sn, input_like((3, c, 4, 4)), running=running)
    assert int(sn.bn.num_batches_tracked) == 0
    torch.testing.assert_close(sn.bn.running_var, running[1])


def test_layer_and_batch_scopes_follow_from_instance_moments():
    """With all weight on one scope, SN is IN / LN / BN, with the variance
    the reference derives from the unbiased instance variances: the biased
    variance over the scope plus mean(biased instance variance) / (HW - 1).
    Computed here directly over (C, H, W) / (N, H, W), not from the
    instance moments."""
    n, c, h, w = 3, 5, 4, 6
    hw = h * w
    x = input_like((n, c, h, w)).detach()
    var_in_biased = x.var(dim=(2, 3), unbiased=False)  # (N, C)
    scopes = {
        0: (x.mean(dim=(2, 3), keepdim=True), x.var(dim=(2, 3), keepdim=True)),
        1: (
            x.mean(dim=(1, 2, 3), keepdim=True),
            x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
            + var_in_biased.mean(1).view(n, 1, 1, 1) / (hw - 1),
        ),
        2: (
            x.mean(dim=(0, 2, 3), keepdim=True),
            x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            + var_in_biased.mean(0).view(1, c, 1, 1) / (hw - 1),
        ),
    }
    for k, (mean, var) in scopes.items():
        sn = SwitchNorm2d(c).double().train()
        logits = torch.full((3,), -60.0, dtype=torch.float64)
        logits[k] = 60.0  # softmax: 1 and ~1e-52
        with torch.no_grad():
            sn.mean_weight.copy_(logits)
            sn.var_weight.copy_(logits)
        with torch.no_grad():
            y = sn(x)
        torch.testing.assert_close(
            y,
            (x - mean) / (var + EPS).sqrt(),
            rtol=1e-10,
            atol=1e-10,
            msg=f'scope {k}',
        )


@pytest.mark.parametrize('n', [1, 4])
def test_one_by_one_maps_are_finite(n):
    """The reference gives NaN on (N, C, 1, 1) (unbiased variance of one
    value); SN here takes that variance as 0, in training and eval."""
    c = 6
    x = input_like((n, c, 1, 1))
    reference_var = x.reshape(n, c, -1).var(-1)
    assert torch.isnan(reference_var).all()
    sn = randomised(SwitchNorm2d(c).double()).train()
    batch = check_against_formula(sn, x)
    assert all(torch.isfinite(s).all() for s in batch)
    with torch.no_grad():
        y = sn(x)
    assert torch.isfinite(y).all()
    sn.eval()
    check_against_formula(
        sn, x, running=(sn.bn.running_mean.clone(), sn.bn.running_var.clone())
    )


@pytest.mark.parametrize('using_moving_average', [True, False])
def test_running_estimates_over_several_batches(using_moving_average):
    c = 3
    sn = SwitchNorm2d(
        c, momentum=0.1, using_moving_average=using_moving_average
    ).double()
    batches = []
    for i in range(5):
        x = input_like((2, c, 3, 4), seed=10 + i) * (1 + i)
        with torch.no_grad():
            sn(x)
        _, batch = sn_formula(
            x.detach(), sn.mean_weight, sn.var_weight, sn.weight, sn.bias
        )
        batches.append(batch)
    means = torch.stack([b[0] for b in batches])
    variances = torch.stack([b[1] for b in batches])
    if using_moving_average:
        mean, var = (
            torch.zeros(c, dtype=torch.float64),
            torch.zeros(c, dtype=torch.float64),
        )
        for m, v in zip(means, variances):
            mean, var = 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v
    else:
        # The batch average: mean and variance over all batches seen.
        mean = means.mean(0)
        var = (variances + means**2).mean(0) - mean**2
    torch.testing.assert_close(sn.bn.running_mean, mean)
    torch.testing.assert_close(sn.bn.running_var, var)
    assert int(sn.bn.num_batches_tracked) == 5
    assert sn.using_moving_average is using_moving_average


def test_momentum_none_is_the_batch_average():
    a = SwitchNorm2d(3, momentum=None).double()
    b = SwitchNorm2d(3, using_moving_average=False).double()
    for i in range(3):
        x = input_like((2, 3, 4, 4), seed=i)
        with torch.no_grad():
            a(x)
            b(x)
    torch.testing.assert_close(a.bn.running_var, b.bn.running_var)


def test_fast_and_plain_agree_in_float32():
    x = input_like((4, 16, 9, 11), dtype=torch.float32)
    outs = {}
    for impl in ('auto', 'plain'):
        sn = randomised(SwitchNorm2d(16, impl=impl))
        y = sn(x)
        y.backward(torch.ones_like(y) * torch.linspace(-1, 1, 11))
        outs[impl] = (
            y,
            x.grad.clone(),
            sn.mean_weight.grad,
            sn.var_weight.grad,
            sn.weight.grad,
            sn.bn.running_var,
        )
        x.grad = None
    for a, b in zip(outs['auto'], outs['plain']):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channels_last_input_matches_formula():
    sn = randomised(SwitchNorm2d(6).double())
    x = (
        input_like((3, 6, 4, 5))
        .detach()
        .to(memory_format=torch.channels_last)
        .requires_grad_(True)
    )
    check_against_formula(sn, x)


def test_bf16_autocast_runs_in_float32_statistics():
    sn = SwitchNorm2d(8)
    x = input_like((2, 8, 6, 6), dtype=torch.float32)
    expected = sn(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = sn(x.bfloat16())
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)
    assert torch.isfinite(sn.mean_weight.grad).all()


def test_empty_batch():
    sn = SwitchNorm2d(4)
    x = torch.zeros(0, 4, 5, 5, requires_grad=True)
    y = sn(x)
    y.sum().backward()
    assert y.shape == x.shape
    assert int(sn.bn.num_batches_tracked) == 0


# --------------------------------------------------------------------- #
# Options, registry, errors
# --------------------------------------------------------------------- #
def test_built_from_a_bn_norm_cfg_by_changing_type():
    cfg = dict(type='BN', eps=1e-3, momentum=0.03, requires_grad=False)
    cfg['type'] = 'SN'
    name, sn = build_norm_layer(cfg, 32)
    assert name == 'sn' and isinstance(sn, SwitchNorm2d)
    assert sn.eps == 1e-3 and sn.momentum == 0.03
    assert not any(p.requires_grad for p in sn.parameters())
    name, sn = build_norm_layer(
        dict(type='SwitchNorm2d', using_bn=False), 8, postfix=2
    )
    assert name == 'sn2' and sn.mean_weight.shape == (2,)
    assert 'using_bn=False' in repr(sn)


def test_initial_state_and_checkpoint_keys():
    sn = SwitchNorm2d(5)
    assert torch.equal(sn.mean_weight, torch.ones(3))
    assert torch.equal(sn.weight, torch.ones(5))
    assert torch.equal(sn.bn.running_var, torch.zeros(5))
    assert torch.equal(SwitchNorm2d(5, last_gamma=True).weight, torch.zeros(5))
    assert sorted(sn.state_dict()) == [
        'bn.bias',
        'bn.num_batches_tracked',
        'bn.running_mean',
        'bn.running_var',
        'bn.weight',
        'mean_weight',
        'var_weight',
    ]


@pytest.mark.parametrize(
    'kwargs, option',
    [
        (dict(eps=0), 'eps'),
        (dict(momentum=1.5), 'momentum'),
        (dict(using_bn='yes'), 'using_bn'),
        (dict(using_moving_average=None), 'using_moving_average'),
        (dict(last_gamma=1), 'last_gamma'),
        (dict(impl='fast'), 'impl'),
    ],
)
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(
        ValueError,
        match=rf'SN\(num_features=8\): option '
        rf'`{option}`',
    ):
        build_norm_layer(dict(type='SN', **kwargs), 8)
    with pytest.raises(TypeError, match='num_groups'):
        build_norm_layer(dict(type='SN', num_groups=4), 8)


def test_bad_inputs_name_the_layer():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='SN')))
    name_norm_layers(model)
    with pytest.raises(
        ValueError,
        match=r'SN layer "0.sn" \(SwitchNorm2d, '
        r'8 channels\): expected 8 input channels, got 4',
    ):
        model[0].sn(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match='expected a 4-D input'):
        model[0].sn(torch.zeros(2, 8, 3))


# --------------------------------------------------------------------- #
# In OpenMMLab models
# --------------------------------------------------------------------- #
def _backbone(**kwargs):
    from dn_mmdet.models.backbones import MobileNetV2DN

    return MobileNetV2DN(norm_cfg=dict(type='SN', eps=1e-3), **kwargs)


def test_norm_eval_and_frozen_stages_in_a_backbone():
    backbone = _backbone(norm_eval=True, frozen_stages=1)
    backbone.train()
    sns = [m for m in backbone.modules() if isinstance(m, SwitchNorm2d)]
    assert len(sns) == 52
    assert all(not m.uses_batch_statistics for m in sns)
    before = [m.bn.running_var.clone() for m in sns]
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out).backward()
    assert all(torch.equal(a, m.bn.running_var) for a, m in zip(before, sns))
    for frozen in (backbone.stem, backbone.stage1):
        for m in frozen.modules():
            if isinstance(m, SwitchNorm2d):
                assert not m.mean_weight.requires_grad
                assert m.mean_weight.grad is None and m.weight.grad is None
    last = backbone.conv_last.sn
    assert last.mean_weight.grad is not None and last.weight.grad is not None


def test_norm_decay_mult_applies_to_gamma_beta_not_mixing_weights():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='SN')))
    constructor = DefaultOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        paramwise_cfg=dict(norm_decay_mult=0.0),
    )
    groups = constructor(model).optimizer.param_groups
    decay = {id(g['params'][0]): g['weight_decay'] for g in groups}
    sn = model[0].sn
    assert decay[id(sn.weight)] == 0 and decay[id(sn.bias)] == 0
    assert decay[id(sn.mean_weight)] == decay[id(sn.var_weight)] == 1e-4


def test_efficient_conv_bn_eval_leaves_sn_alone():
    block = ConvModule(
        3, 8, 3, norm_cfg=dict(type='SN'), efficient_conv_bn_eval=True
    )
    assert block.efficient_conv_bn_eval_forward is None
    block.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = block.activate(block.sn(block.conv(x)))
        torch.testing.assert_close(block(x), expected)


def test_sync_bn_converts_only_the_statistics_child():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='SN')))
    x = torch.randn(4, 3, 8, 8)
    reference = randomised(SwitchNorm2d(8))
    model[0].sn.load_state_dict(reference.state_dict())
    expected = model(x)
    synced = convert_sync_batchnorm(model)
    sn = synced[0].sn
    assert isinstance(sn, SwitchNorm2d)
    assert isinstance(sn.bn, nn.SyncBatchNorm)
    # No process group: the batch scope is this process's batch.
    assert sn.synced_processes() == 1
    torch.testing.assert_close(synced(x), expected)
    reverted = revert_sync_batchnorm(synced)
    assert type(reverted[0].sn.bn).__name__ in ('BatchNorm2d', '_BatchNormXd')
    assert set(reverted.state_dict()) == set(model.state_dict())


def test_bn_init_rules_reach_gamma_and_beta():
    """mmdet's ResNet ``zero_init_residual`` (a Constant init of ``norm2``
    by name) and ``Constant`` init on ``_BatchNorm`` set SN's gamma."""
    from mmdet.models.backbones import ResNet

    resnet = ResNet(
        depth=18, norm_cfg=dict(type='SN'), zero_init_residual=True
    )
    resnet.init_weights()
    block = resnet.layer1[0]
    assert block.norm2_name == 'sn2'
    assert torch.equal(block.norm2.weight, torch.zeros(64))
    assert torch.equal(block.norm1.weight, torch.ones(64))
