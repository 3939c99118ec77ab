"""tools/model_converters/mobilenetv2_to_dn_backbone.py: mmpretrain's and
mmdet's MobileNetV2 checkpoints become MobileNetV2DN checkpoints that the
detector's backbone loads strictly and that compute the same features."""

import sys

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import MobileNetV2 as MMDetMobileNetV2
from mmpretrain.models import ImageClassifier

from dn_mmdet.models.backbones import MobileNetV2DN


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('model_converters/mobilenetv2_to_dn_backbone')


def randomise_statistics(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
    model.eval()  # mmdet's MobileNetV2.train() returns None
    return model


def mmpretrain_classifier():
    return ImageClassifier(
        backbone=dict(type='mmpretrain.MobileNetV2', widen_factor=1.0),
        data_preprocessor=dict(type='mmpretrain.ClsDataPreprocessor'),
        neck=dict(type='mmpretrain.GlobalAveragePooling'),
        head=dict(
            type='mmpretrain.LinearClsHead', num_classes=1000, in_channels=1280
        ),
    )


@pytest.mark.parametrize('source', ['mmpretrain', 'mmdet'])
def test_converted_checkpoint_loads_strictly_same_features(
    tool, load_tool, tmp_path, capsys, monkeypatch, source
):
    if source == 'mmpretrain':
        model = randomise_statistics(mmpretrain_classifier())
        state, features = model.state_dict(), model.backbone
        dropped = 'head.fc.weight, head.fc.bias'
    else:
        features = randomise_statistics(MMDetMobileNetV2(out_indices=(7,)))
        state, dropped = features.state_dict(), None
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(dict(state_dict=state), src)
    tool.main([str(src), str(dst)])
    out = capsys.readouterr().out
    assert '312 tensors' in out
    if dropped:
        assert f'left out (not MobileNetV2DN layers): {dropped}' in out

    backbone = MobileNetV2DN(
        out_taps=('conv_last',),
        norm_cfg=dict(type='BN'),
        init_cfg=dict(
            type='Pretrained', checkpoint=str(dst), prefix='backbone.'
        ),
    )
    backbone.init_weights()  # strict: raises on any key mismatch
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[0], features(x)[-1])

    # then bn2dn for a DN backbone, which loads it strictly too
    dn = tmp_path / 'dn.pth'
    monkeypatch.setattr(
        sys,
        'argv',
        [
            'bn2dn.py',
            str(dst),
            str(dn),
            '--prefix',
            'backbone.',
            '--r',
            '16',
            '--g',
            'oup',
        ],
    )
    load_tool('model_converters/bn2dn').main()
    MobileNetV2DN(
        out_taps=('conv_last',),
        norm_cfg=dict(type='DN', r=16, g='oup'),
        init_cfg=dict(
            type='Pretrained', checkpoint=str(dn), prefix='backbone.'
        ),
    ).init_weights()


def test_other_networks_are_refused(tool, tmp_path):
    from mmdet.models.backbones import ResNet

    src, dst = tmp_path / 'resnet.pth', tmp_path / 'out.pth'
    torch.save(ResNet(depth=18).state_dict(), src)
    with pytest.raises(SystemExit) as err:
        tool.main([str(src), str(dst)])
    assert (
        'expected the 104 conv and BN layers of MobileNetV2 1.0, '
        'found 40' in str(err.value)
    )
    assert not dst.exists()
    # a MobileNetV2 of another width: the first wrong shape is named
    narrow = MMDetMobileNetV2(widen_factor=0.5, out_indices=(7,))
    torch.save(narrow.state_dict(), src)
    with pytest.raises(SystemExit) as err:
        tool.main([str(src), str(dst)])
    assert (
        'conv1.conv.weight has shape (16, 3, 3, 3), but MobileNetV2DN '
        'stem.conv.weight has (32, 3, 3, 3)' in str(err.value)
    )
