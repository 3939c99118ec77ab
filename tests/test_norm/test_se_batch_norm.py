"""SEBN: the paper's SE-then-BN baseline as a norm_cfg type."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.registry import DefaultScope

import dn_mmdet  # noqa: F401  (registers SEBN)
from dn_mmdet.norm import SEBatchNorm2d


def test_math_is_se_then_batch_norm():
    torch.manual_seed(0)
    layer = SEBatchNorm2d(32, r=4)
    with torch.no_grad():
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.normal_()
    x = torch.randn(3, 32, 5, 6) * 2 + 1
    w1, b1 = layer.se_fc1.weight, layer.se_fc1.bias
    w2, b2 = layer.se_fc2.weight, layer.se_fc2.bias
    scale = torch.sigmoid(
        F.linear(F.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2)
    )
    recalibrated = x * scale[:, :, None, None]
    expected = F.batch_norm(
        recalibrated,
        None,
        None,
        layer.bn.weight,
        layer.bn.bias,
        training=True,
        eps=layer.bn.eps,
    )
    torch.testing.assert_close(layer(x), expected)
    # eval: BN's running statistics (of the recalibrated input)
    layer.eval()
    expected = F.batch_norm(
        recalibrated,
        layer.bn.running_mean,
        layer.bn.running_var,
        layer.bn.weight,
        layer.bn.bias,
        eps=layer.bn.eps,
    )
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    'channels,r,hidden', [(32, 16, 2), (16, 16, 1), (8, 16, 1), (1280, 16, 80)]
)
def test_parameters_are_se_with_bias_plus_bn_affine(channels, r, hidden):
    layer = SEBatchNorm2d(channels, r=r)
    assert layer.se_fc1.out_features == hidden
    expected = channels * hidden + hidden + hidden * channels + channels
    expected += 2 * channels  # BN keeps gamma and beta
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_norm_cfg_type_under_every_scope_and_keys():
    for scope in (None, 'mmdet', 'mmpretrain'):
        with DefaultScope.overwrite_default_scope(scope):
            name, layer = build_norm_layer(
                dict(type='SEBN', r=8, eps=1e-3, requires_grad=True), 64
            )
        assert name == 'sebn' and isinstance(layer, SEBatchNorm2d)
        assert layer.bn.eps == 1e-3 and layer.se_fc1.out_features == 8
    conv = ConvModule(3, 16, 3, norm_cfg=dict(type='SEBN'))
    assert sorted(conv.state_dict()) == sorted(
        [
            'conv.weight',
            'sebn.se_fc1.weight',
            'sebn.se_fc1.bias',
            'sebn.se_fc2.weight',
            'sebn.se_fc2.bias',
            'sebn.bn.weight',
            'sebn.bn.bias',
            'sebn.bn.running_mean',
            'sebn.bn.running_var',
            'sebn.bn.num_batches_tracked',
        ]
    )
    assert conv(torch.randn(2, 3, 8, 8)).shape == (2, 16, 6, 6)


def test_layer_name_init_leaves_se_alone():
    """A backbone's layer-name init (e.g. Kaiming on Conv2d) must not touch
    the SE FCs: they keep PyTorch's default FC init."""
    from mmengine.model import initialize

    conv = ConvModule(3, 32, 1, norm_cfg=dict(type='SEBN'))
    before = conv.norm.se_fc1.weight.clone()
    initialize(
        conv, dict(type='Constant', layer=['Conv2d', 'Linear'], val=0.5)
    )
    assert (conv.conv.weight == 0.5).all()
    torch.testing.assert_close(conv.norm.se_fc1.weight, before)


def test_batch_statistics_and_errors():
    layer = SEBatchNorm2d(8)
    assert layer.uses_batch_statistics
    layer.eval()
    assert not layer.uses_batch_statistics
    layer.train()
    with pytest.raises(ValueError, match='expected 8 input channels'):
        layer(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match='1 value'):
        layer(torch.randn(1, 8, 1, 1))
    with pytest.raises(ValueError, match='r \\(SE reduction\\)'):
        SEBatchNorm2d(8, r=0)
    assert isinstance(layer.bn, nn.BatchNorm2d)
    assert 'r=16 (hidden=1)' in repr(layer)
