"""MobileNetV2DN: structure, FNA taps, freezing, norm_eval, pretrained."""

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.runner import save_checkpoint
from torch.nn.modules.batchnorm import _BatchNorm

from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.norm import DynamicNorm2d

BN = dict(type='BN', eps=1e-3)
DN = dict(type='DN', r=16, g='oup', eps=1e-3)


def _conv_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registered_and_default_norm_is_dn():
    model = MODELS.build(dict(type='MobileNetV2DN'))
    assert isinstance(model, MobileNetV2DN)
    norms = [m for m in model.modules() if isinstance(m, DynamicNorm2d)]
    # Every conv is followed by a DN: 52 norm layers in MobileNetV2.
    assert len(norms) == 52
    assert all(n.g == 'oup' and n.r == 16 for n in norms)


@pytest.mark.parametrize('norm_cfg', [BN, DN])
def test_fna_taps_at_320(norm_cfg):
    model = MobileNetV2DN(norm_cfg=norm_cfg).eval()
    assert model.out_channels == (576, 1280)
    assert model.out_strides == (16, 32)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 320, 320))
    assert [tuple(f.shape) for f in feats] == [
        (2, 576, 20, 20),
        (2, 1280, 10, 10),
    ]
    # The stride-16 tap is a ReLU6 output (expansion conv + norm + act).
    assert feats[0].min() >= 0 and feats[0].max() <= 6


def test_stride16_tap_is_first_160_block_expansion():
    model = MobileNetV2DN(norm_cfg=BN).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        y = model.stem(x)
        for name in ['stage1', 'stage2', 'stage3', 'stage4', 'stage5']:
            y = getattr(model, name)(y)
        expected = model.stage6[0].expand_conv(y)
        tap, _ = model(x)
    assert model.stage6[0].expand_conv.out_channels == 576
    assert model.stage6[0].depthwise_conv.stride == (2, 2)
    torch.testing.assert_close(tap, expected)


def test_other_size_and_all_taps():
    taps = (
        'stem',
        'stage1',
        'stage2_expand',
        'stage2',
        'stage3',
        'stage4',
        'stage5',
        'stage6_expand',
        'stage6',
        'stage7',
        'conv_last',
    )
    model = MobileNetV2DN(out_taps=taps, norm_cfg=BN).eval()
    assert model.out_channels == (
        32,
        16,
        96,
        24,
        32,
        64,
        96,
        576,
        160,
        320,
        1280,
    )
    assert model.out_strides == (2, 2, 2, 4, 8, 16, 16, 16, 32, 32, 32)
    h, w = 200, 136  # not multiples of 32: sizes round up at every stride
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    for f, c, s in zip(feats, model.out_channels, model.out_strides):
        assert f.shape[1] == c
        assert f.shape[2:] == (-(-h // s), -(-w // s))


def test_taps_are_returned_in_requested_order():
    model = MobileNetV2DN(out_taps=('conv_last', 'stage4'), norm_cfg=BN).eval()
    with torch.no_grad():
        last, s4 = model(torch.randn(1, 3, 64, 64))
    assert last.shape[1] == 1280 and s4.shape[1] == 64


def test_bad_tap_names_tap_and_valid_ones():
    with pytest.raises(ValueError) as err:
        MobileNetV2DN(out_taps=('stage6_expand', 'stage1_expand'), norm_cfg=BN)
    msg = str(err.value)
    assert "'stage1_expand'" in msg  # stage1 has no expansion conv
    assert 'stage6_expand' in msg and 'conv_last' in msg  # valid ones listed
    with pytest.raises(ValueError, match='at least one'):
        MobileNetV2DN(out_taps=(), norm_cfg=BN)


def test_param_count_matches_paper_classifier():
    # The paper's MobileNetV2-BN with a 100-class classifier: 2.35M.
    model = MobileNetV2DN(norm_cfg=BN)
    backbone = sum(p.numel() for p in model.parameters())
    assert backbone == 2_223_872
    assert round((backbone + 1280 * 100 + 100) / 1e6, 2) == 2.35


def test_convs_are_bias_free():
    model = MobileNetV2DN(norm_cfg=BN)
    assert all(m.bias is None for m in _conv_modules(model))


@pytest.mark.parametrize('frozen', [0, 3, 8])
def test_frozen_stages(frozen):
    model = MobileNetV2DN(frozen_stages=frozen, norm_cfg=BN)
    model.train()
    layers = (
        [model.stem]
        + [getattr(model, f'stage{i}') for i in range(1, 8)]
        + [model.conv_last]
    )
    for i, layer in enumerate(layers):
        frozen_layer = i <= frozen
        assert all(
            p.requires_grad != frozen_layer for p in layer.parameters()
        ), i
        assert all(m.training != frozen_layer for m in layer.modules()), i


def test_frozen_stages_out_of_range():
    with pytest.raises(ValueError, match='frozen_stages'):
        MobileNetV2DN(frozen_stages=9, norm_cfg=BN)


@pytest.mark.parametrize('norm_cfg', [BN, DN])
def test_norm_eval_freezes_running_stats(norm_cfg):
    model = MobileNetV2DN(norm_cfg=norm_cfg, norm_eval=True)
    model.train()
    stats = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    # BN layers, or DN's child ``bn`` holding its statistics.
    assert len(stats) == 52
    before = [m.running_mean.clone() for m in stats]
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert all(not m.training for m in stats)
    for m, b in zip(stats, before):
        torch.testing.assert_close(m.running_mean, b)
    # Without norm_eval the statistics move.
    model = MobileNetV2DN(norm_cfg=norm_cfg).train()
    stats = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    before = stats[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.allclose(stats[0].running_mean, before)


def test_state_dict_names():
    keys = MobileNetV2DN(norm_cfg=DN).state_dict().keys()
    assert 'stem.conv.weight' in keys
    assert 'stage6.0.expand_conv.conv.weight' in keys
    assert 'stage6.0.expand_conv.dn.sc.fc2.weight' in keys
    assert 'stage1.0.depthwise_conv.dn.bn.running_mean' in keys
    assert 'conv_last.dn.sc.fc1.bias' in keys
    bn_keys = MobileNetV2DN(norm_cfg=BN).state_dict().keys()
    assert 'stage7.0.linear_conv.bn.weight' in bn_keys


def _pretrained_model(checkpoint, **kwargs):
    return MobileNetV2DN(
        norm_cfg=BN,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, **kwargs),
    )


def test_pretrained_loads_mmengine_checkpoint_with_prefix(tmp_path):
    # A classifier-style mmengine checkpoint: backbone.* plus a head.
    source = MobileNetV2DN(norm_cfg=BN)
    for p in source.parameters():
        nn.init.normal_(p)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(100, 1280)
    path = str(tmp_path / 'cls.pth')
    save_checkpoint(dict(state_dict=state, meta=dict(epoch=1)), path)

    model = _pretrained_model(path, prefix='backbone.')
    model.init_weights()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_pretrained_missing_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    model = _pretrained_model(path)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        model.init_weights()


def test_pretrained_key_mismatch_names_keys(tmp_path):
    # A BN checkpoint into a DN backbone: DN's SC-Module keys are missing and
    # BN's affine keys unused.
    path = str(tmp_path / 'bn.pth')
    torch.save(MobileNetV2DN(norm_cfg=BN).state_dict(), path)
    model = MobileNetV2DN(
        norm_cfg=DN, init_cfg=dict(type='Pretrained', checkpoint=path)
    )
    with pytest.raises(RuntimeError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'stem.dn.sc.fc1.weight' in msg  # missing
    assert 'stem.bn.weight' in msg  # unexpected
    assert 'bn.pth' in msg


def test_pretrained_without_prefix_keys_is_an_error(tmp_path):
    path = str(tmp_path / 'det.pth')
    state = {
        f'model.{k}': v
        for k, v in MobileNetV2DN(norm_cfg=BN).state_dict().items()
    }
    torch.save(state, path)
    with pytest.raises(RuntimeError, match='prefix "backbone."'):
        _pretrained_model(path, prefix='backbone.').init_weights()


def test_pretrained_shape_mismatch(tmp_path):
    state = MobileNetV2DN(norm_cfg=BN).state_dict()
    state['stem.conv.weight'] = torch.zeros(32, 3, 5, 5)
    path = str(tmp_path / 'shape.pth')
    torch.save(state, path)
    with pytest.raises(ValueError, match=r'stem\.conv\.weight'):
        _pretrained_model(path).init_weights()
