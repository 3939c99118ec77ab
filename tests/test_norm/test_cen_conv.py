"""The weight-centred convolution: its formula with groups, its registry
entry, and the mmcv paths that rescale a conv's weight."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_conv_layer
from mmcv.cnn.utils import fuse_conv_bn
from mmengine.model import BaseModule

from dn_mmdet.norm import CenConv2d


def centred(weight):
    """Each output channel's kernel minus its mean over (in, kh, kw),
    written as a loop over output channels."""
    out = weight.clone()
    for o in range(weight.shape[0]):
        out[o] = weight[o] - weight[o].sum() / weight[o].numel()
    return out


@pytest.mark.parametrize(
    'in_ch, out_ch, groups', [(6, 4, 1), (6, 4, 2), (6, 6, 6), (6, 12, 6)]
)
def test_forward_and_gradients_match_formula(in_ch, out_ch, groups):
    torch.manual_seed(0)
    conv = CenConv2d(
        in_ch, out_ch, 3, stride=2, padding=1, groups=groups
    ).double()
    assert conv.bias is None  # the reference's default
    x = torch.randn(2, in_ch, 9, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, out_ch, 5, 4, dtype=torch.float64)
    y = conv(x)
    got = torch.autograd.grad(y, [x, conv.weight], grad)

    weight = conv.weight.detach().clone().requires_grad_(True)
    y_ref = F.conv2d(x, centred(weight), None, 2, 1, 1, groups)
    expected = torch.autograd.grad(y_ref, [x, weight], grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Each output channel's effective kernel sums to zero over its group.
    sums = conv.centered_weight().sum(dim=(1, 2, 3))
    torch.testing.assert_close(sums, torch.zeros_like(sums))
    # ... so a constant input gives zero output away from the padding.
    const = conv(torch.full((1, in_ch, 9, 8), 3.0, dtype=torch.float64))
    assert const[..., 1:-1, 1:-1].abs().max() < 1e-12


def test_registered_and_used_by_conv_module():
    conv = build_conv_layer(dict(type='CenConv'), 4, 8, 3, padding=1)
    assert isinstance(conv, CenConv2d)
    assert isinstance(
        build_conv_layer(dict(type='CenConv2d'), 4, 8, 1), CenConv2d
    )
    block = ConvModule(
        4, 8, 3, conv_cfg=dict(type='CenConv'), norm_cfg=dict(type='BN')
    )
    assert isinstance(block.conv, CenConv2d) and block.conv.bias is None
    # Checkpoint keys are a Conv2d's; init by layer type finds it.
    assert set(block.conv.state_dict()) == {'weight'}

    class Net(BaseModule):
        def __init__(self):
            super().__init__(
                init_cfg=dict(type='Constant', layer='Conv2d', val=0.5)
            )
            self.conv = CenConv2d(2, 2, 1)

    net = Net()
    net.init_weights()
    assert torch.all(net.conv.weight == 0.5)


def test_efficient_conv_bn_eval_and_fusion_stay_exact():
    """Both rescale the weight per output channel, which commutes with the
    centring: results equal the plain eval forward."""
    torch.manual_seed(0)
    kwargs = dict(
        padding=1,
        groups=4,
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='BN'),
    )
    plain = ConvModule(4, 8, 3, **kwargs).double()
    with torch.no_grad():
        plain.bn.running_mean.normal_()
        plain.bn.running_var.uniform_(0.5, 2)
        plain.bn.weight.normal_()
        plain.bn.bias.normal_()
    plain.eval()
    efficient = (
        ConvModule(4, 8, 3, efficient_conv_bn_eval=True, **kwargs)
        .double()
        .eval()
    )
    efficient.load_state_dict(plain.state_dict())
    assert efficient.efficient_conv_bn_eval_forward is not None
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(efficient(x), expected)
        fused = fuse_conv_bn(nn.Sequential(plain))[0]
        assert isinstance(fused.bn, nn.Identity)
        torch.testing.assert_close(fused(x), expected)


def test_mabn_cenconv_model_converts_to_plain_conv_bn():
    """MABN + CenConv in eval becomes convs and BNs (then folded): the
    same outputs, no MABN or CenConv left."""
    from dn_mmdet.models.backbones import MobileNetV2DN
    from dn_mmdet.norm import MABN2d

    torch.manual_seed(0)
    backbone = MobileNetV2DN(
        out_taps=('stage3',),
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=2, real_batch_size=4),
    )
    backbone.train()
    for _ in range(3):
        backbone(torch.randn(2, 3, 32, 32))
    backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(x)[0]
        plain = CenConv2d.convert_to_conv2d(
            MABN2d.convert_to_batchnorm(backbone)
        )
        kinds = {type(m) for m in plain.modules()}
        assert MABN2d not in kinds and CenConv2d not in kinds
        torch.testing.assert_close(plain(x)[0], expected)
        folded = fuse_conv_bn(plain)
        assert nn.BatchNorm2d not in {type(m) for m in folded.modules()}
        torch.testing.assert_close(
            folded(x)[0], expected, rtol=1e-4, atol=1e-4
        )
