"""DN inside OpenMMLab: registration, the _BatchNorm-dependent paths,
conversion, errors, precision and export. (The paper's parameter counts are
asserted on the stage-1 configs: tests/test_configs/
test_classification_configs.py.)"""

import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.models.backbones import MobileNetV2
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm

import dn_mmdet  # noqa: F401  (registers DN)
from dn_mmdet.norm import DynamicNorm2d, NormLayer, name_norm_layers


def count_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    'scope', [None, 'mmdet', 'mmengine', 'mmpretrain', 'mmyolo']
)
def test_registered_for_build_norm_layer_under_every_scope(scope):
    # scopes of packages that are not installed (mmpretrain, mmyolo) fall
    # back to the root registry, where DN lives
    with DefaultScope.overwrite_default_scope(scope):
        abbr, layer = build_norm_layer(dict(type='DN', r=8, g='oup'), 64)
    assert abbr == 'dn' and isinstance(layer, DynamicNorm2d)
    assert layer.sc.fc2.groups == 1


def test_bn_config_with_only_type_changed_works():
    """A BN norm_cfg (requires_grad, eps, momentum) switched to DN."""
    cfg = dict(type='BN', requires_grad=False, eps=1e-3, momentum=0.03)
    cfg['type'] = 'DN'
    name, layer = build_norm_layer(cfg, 32, postfix=1)
    assert name == 'dn1'
    assert layer.eps == 1e-3 and layer.momentum == 0.03
    assert all(not p.requires_grad for p in layer.parameters())
    conv = ConvModule(3, 32, 3, padding=1, norm_cfg=dict(type='DN'))
    assert isinstance(conv.norm, DynamicNorm2d) and conv.norm_name == 'dn'
    assert conv(torch.randn(2, 3, 8, 8)).shape == (2, 32, 8, 8)


def test_checkpoint_keys_are_stable():
    conv = ConvModule(3, 32, 3, norm_cfg=dict(type='DN', g='oup'))
    assert sorted(conv.state_dict()) == sorted(
        [
            'conv.weight',
            'dn.base_scale',
            'dn.base_shift',
            'dn.bn.running_mean',
            'dn.bn.running_var',
            'dn.bn.num_batches_tracked',
            'dn.sc.fc1.weight',
            'dn.sc.fc1.bias',
            'dn.sc.fc2.weight',
        ]
    )


def test_not_a_batchnorm_but_statistics_are():
    dn = DynamicNorm2d(8)
    assert not isinstance(dn, _BatchNorm)
    assert isinstance(dn, NormLayer)
    assert isinstance(dn.bn, _BatchNorm) and not dn.bn.affine


def test_uses_batch_statistics_follows_the_statistics_child():
    dn = DynamicNorm2d(8)
    assert dn.uses_batch_statistics
    dn.bn.eval()  # what a backbone's norm_eval does
    assert dn.training and not dn.uses_batch_statistics
    dn.eval()
    assert not dn.uses_batch_statistics
    no_running = DynamicNorm2d(8, track_running_stats=False).eval()
    assert no_running.uses_batch_statistics
    # a SyncBatchNorm child outside distributed training syncs nothing
    synced = convert_sync_batchnorm(nn.Sequential(DynamicNorm2d(8)))[0]
    assert isinstance(synced.bn, nn.SyncBatchNorm)
    assert synced.synced_processes() == 1


def test_norm_eval_and_frozen_stages_in_mmdet_backbone():
    model = MobileNetV2(
        out_indices=(2,),
        frozen_stages=1,
        norm_eval=True,
        norm_cfg=dict(type='DN'),
    )
    model.train()
    dns = [m for m in model.modules() if isinstance(m, DynamicNorm2d)]
    before = [m.bn.running_mean.clone() for m in dns]
    out = model(torch.randn(2, 3, 64, 64))
    out[0].sum().backward()
    for m, b in zip(dns, before):
        assert not m.bn.training
        torch.testing.assert_close(m.bn.running_mean, b)
    # frozen stage 1 (stem + layer1): no gradient reaches the SC-Modules
    for p in model.conv1.parameters():
        assert not p.requires_grad
    for p in model.layer2.parameters():
        assert p.requires_grad and p.grad is not None


def test_sync_bn_conversion_keeps_dn_and_syncs_its_statistics():
    model = nn.Sequential(ConvModule(3, 16, 3, norm_cfg=dict(type='DN')))
    converted = convert_sync_batchnorm(copy.deepcopy(model), 'torch')
    dn = converted[0].norm
    assert isinstance(dn, DynamicNorm2d)
    assert isinstance(dn.bn, nn.SyncBatchNorm)
    assert converted[0].norm_name == 'dn'
    # outside distributed training, DN with a SyncBN child computes what it
    # did before, and reverting gives back a plain BatchNorm child
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(converted(x), model(x))
    reverted = revert_sync_batchnorm(converted)
    assert isinstance(reverted[0].norm, DynamicNorm2d)
    assert not isinstance(reverted[0].norm.bn, nn.SyncBatchNorm)


def test_efficient_conv_bn_eval_leaves_dn_alone():
    torch.manual_seed(0)
    plain = ConvModule(4, 8, 3, norm_cfg=dict(type='DN'))
    eff = copy.deepcopy(plain)
    eff.turn_on_efficient_conv_bn_eval(True)
    assert eff.efficient_conv_bn_eval_forward is None
    plain.eval(), eff.eval()
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(eff(x), plain(x))


def test_layer_name_init_does_not_touch_sc_module():
    """A detector's init_cfg (Normal on Conv2d, Constant on _BatchNorm) must
    keep FC2 at zero: DN still starts as BN."""
    from mmengine.model import BaseModule

    class Net(BaseModule):
        def __init__(self):
            super().__init__(
                init_cfg=[
                    dict(type='Normal', layer='Conv2d', std=0.03),
                    dict(
                        type='Constant',
                        layer=['_BatchNorm', 'GroupNorm'],
                        val=1,
                    ),
                    dict(type='Normal', layer='Linear', std=0.01),
                ]
            )
            self.conv = ConvModule(3, 16, 3, norm_cfg=dict(type='DN'))

    net = Net()
    net.init_weights()
    assert torch.count_nonzero(net.conv.norm.sc.fc2.weight) == 0
    torch.testing.assert_close(net.conv.norm.base_scale, torch.ones(16))


def test_norm_decay_mult_applies_to_bn_only_not_sc_weights():
    """Decision: the SC-Module's weights are generator weights and keep
    weight decay; norm_decay_mult affects static norm affines only."""
    model = nn.Sequential(
        ConvModule(3, 8, 3, norm_cfg=dict(type='BN')),
        ConvModule(8, 8, 3, norm_cfg=dict(type='DN')),
    )
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0),
        ),
    )
    decay = {
        id(g['params'][0]): g['weight_decay']
        for g in wrapper.optimizer.param_groups
    }
    bn, dn = model[0].norm, model[1].norm
    assert decay[id(bn.weight)] == 0.0
    assert decay[id(dn.sc.fc1.weight)] == 1e-4
    assert decay[id(dn.sc.fc2.weight)] == 1e-4
    assert decay[id(dn.sc.fc1.bias)] == 1e-4


def random_bn_model(seed=0):
    torch.manual_seed(seed)
    model = MobileNetV2(out_indices=(4, 7), norm_cfg=dict(type='BN'))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize('g', [1, 'oup'])
def test_convert_batchnorm_model_keeps_outputs_and_paper_counts(g):
    bn_model = random_bn_model()
    bn_model.eval()  # mmdet's MobileNetV2.train() returns None
    dn_model = DynamicNorm2d.convert_batchnorm(copy.deepcopy(bn_model), g=g)
    assert not any(
        isinstance(m, nn.BatchNorm2d) and m.affine for m in dn_model.modules()
    )
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(bn_model(x), dn_model(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the same structure as a model built with DN: same parameter count
    built = MobileNetV2(out_indices=(4, 7), norm_cfg=dict(type='DN', g=g))
    assert count_params(dn_model) == count_params(built)
    # and in training mode (batch statistics) too
    bn_model.train(), dn_model.train()
    for a, b in zip(bn_model(x), dn_model(x)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    'kwargs,message',
    [
        (dict(r=0), 'r (FC1 reduction) must be an int >= 1, got 0'),
        (dict(r=2.5), 'got 2.5'),
        (
            dict(g=0),
            'g (input channels per group of FC2) must be a positive '
            "int or 'oup', got 0",
        ),
        (dict(g='all'), "got 'all'"),
        (dict(mode='D'), "unknown mode 'D'"),
        (dict(eps=0), 'eps must be > 0'),
        (dict(momentum=2), 'momentum must be in [0, 1]'),
    ],
)
def test_build_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match='DN\\(num_features=16\\)') as err:
        build_norm_layer(dict(type='DN', **kwargs), 16)
    assert message in str(err.value)


def test_build_error_for_bad_channel_count():
    with pytest.raises(ValueError, match='num_features must be a positive'):
        DynamicNorm2d(0)


def test_runtime_errors_name_the_layer():
    model = nn.Sequential(ConvModule(3, 8, 1, norm_cfg=dict(type='DN')))
    assert name_norm_layers(model) == 1
    dn = model[0].norm
    assert dn.layer_name == '0.dn'
    with pytest.raises(ValueError, match=r'"0.dn".*expected a 4-D input'):
        dn(torch.randn(2, 8, 4))
    with pytest.raises(
        ValueError, match=r'"0.dn".*expected 8 input channels, got 5'
    ):
        dn(torch.randn(2, 5, 4, 4))


def test_autocast_bf16_cpu_stays_finite_and_close():
    torch.manual_seed(0)
    dn = DynamicNorm2d(32, g='oup')
    with torch.no_grad():
        dn.sc.fc2.weight.normal_(0, 0.1)
    conv = nn.Conv2d(3, 32, 3)
    x = torch.randn(4, 3, 16, 16) * 100  # large activations
    ref = dn(conv(x))
    dn.bn.reset_running_stats()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dn(conv(x))
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert torch.isfinite(dn.bn.running_var).all()
    assert all(torch.isfinite(p.grad).all() for p in dn.parameters())
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_fp16_input_with_large_values_does_not_overflow_statistics():
    dn = DynamicNorm2d(8)
    x = (torch.randn(2, 8, 16, 16) * 50 + 300).half()  # x**2 > fp16 max
    y = dn.float()(x.float())
    y_half = DynamicNorm2d(8)(x)
    assert torch.isfinite(y_half).all()
    torch.testing.assert_close(y_half.float(), y, rtol=1e-2, atol=1e-2)


def test_convert_state_dict_keeps_names_mmcv_does_not_derive_from_bn():
    # ``bn1`` is mmcv's name for a BN layer (``dn1`` for DN); ``norm`` is
    # the model's own name and stays.
    converted = DynamicNorm2d.convert_batchnorm_state_dict(
        {
            'layer.norm.running_mean': torch.zeros(2),
            'layer.norm.running_var': torch.ones(2),
            'layer.bn1.running_mean': torch.zeros(2),
            'layer.bn1.running_var': torch.ones(2),
        }
    )
    assert 'layer.norm.bn.running_var' in converted
    assert 'layer.dn1.bn.running_var' in converted
    assert not any(key.startswith('layer.bn1.') for key in converted)


def mixed_model(seed=0):
    """The paper's detector in small: DN in the backbone (an mmdet
    MobileNetV2), BN after it; every norm with non-trivial values."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        MobileNetV2(out_indices=(2,), norm_cfg=dict(type='DN', g='oup')),
        ConvModule(32, 16, 3, padding=1, norm_cfg=dict(type='BN')),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicNorm2d):
                m.sc.fc2.weight.normal_(0, 0.1)
            if isinstance(m, _BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
    return model


def run_mixed(model, x):
    return model[1](model[0](x)[0])


def test_convert_batchnorm_leaves_existing_dn_layers_alone():
    model = mixed_model().eval()
    dn_layers = [m for m in model.modules() if isinstance(m, DynamicNorm2d)]
    stats_children = [m.bn for m in dn_layers]
    x = torch.randn(2, 3, 32, 32)
    expected = run_mixed(model, x)
    converted = DynamicNorm2d.convert_batchnorm(model, g=1)
    # the DN layers keep their BatchNorm2d statistics children ...
    assert [m for m in converted.modules() if isinstance(m, DynamicNorm2d)][
        : len(dn_layers)
    ] == dn_layers
    assert all(
        type(m.bn) is nn.BatchNorm2d and m.bn is child
        for m, child in zip(dn_layers, stats_children)
    )
    # ... and only the plain BN after the backbone became a DN
    assert isinstance(converted[1].norm, DynamicNorm2d)
    assert converted[1].norm.g == 1 and dn_layers[0].g == 'oup'
    torch.testing.assert_close(
        run_mixed(converted, x), expected, rtol=1e-5, atol=1e-5
    )


def test_convert_state_dict_leaves_existing_dn_layers_alone():
    """With the default prefix '' only plain BNs are converted; the result
    loads strictly into the model built with DN everywhere."""
    model = mixed_model().eval()
    state = model.state_dict()
    converted = DynamicNorm2d.convert_batchnorm_state_dict(state, g='oup')
    # every key of the DN layers is kept as it was
    dn_keys = [k for k in state if '.dn.' in k]
    assert dn_keys and all(
        k in converted and converted[k] is state[k] for k in dn_keys
    )
    assert not any('.dn.dn' in k for k in converted)
    target = nn.Sequential(
        MobileNetV2(out_indices=(2,), norm_cfg=dict(type='DN', g='oup')),
        ConvModule(32, 16, 3, padding=1, norm_cfg=dict(type='DN', g='oup')),
    )
    target.load_state_dict(converted, strict=True)
    target.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        run_mixed(target, x), run_mixed(model, x), rtol=1e-5, atol=1e-5
    )
