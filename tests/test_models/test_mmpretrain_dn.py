"""DN in mmpretrain's own configs (a user's two-line config on top of
``mmpretrain::`` bases): build, one training step, evaluation; and the
project's MobileNetV2DN under mmpretrain's scope."""

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from mmpretrain.evaluation import Accuracy
from mmpretrain.structures import DataSample

from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.norm import DynamicNorm2d


def user_config(tmp_path, base, model):
    """What a user writes to put DN into an mmpretrain config."""
    path = tmp_path / 'cfg.py'
    path.write_text(
        f"_base_ = '{base}'\n"
        "custom_imports = dict(imports=['dn_mmdet'], "
        'allow_failed_imports=False)\n'
        f'model = {model!r}\n'
    )
    return Config.fromfile(str(path))


def batch(num_classes, size=64):
    torch.manual_seed(0)
    return dict(
        inputs=[
            torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
            for _ in range(4)
        ],
        data_samples=[
            DataSample().set_gt_label(i % num_classes) for i in range(4)
        ],
    )


def train_then_evaluate(cfg, num_classes):
    init_default_scope(cfg.default_scope)
    model_cfg = dict(cfg.model, data_preprocessor=cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    fc1 = next(
        m for m in model.modules() if isinstance(m, DynamicNorm2d)
    ).sc.fc1.weight
    before = fc1.detach().clone()
    model.train()
    losses = model.train_step(batch(num_classes), optim_wrapper)
    assert torch.isfinite(losses['loss'])
    assert not torch.equal(fc1, before)  # the SC-Module learns
    model.eval()
    outputs = model.val_step(batch(num_classes))
    assert outputs[0].pred_score.shape == (num_classes,)
    metric = Accuracy(topk=(1,))
    metric.process(None, [o.to_dict() for o in outputs])
    top1 = metric.evaluate(len(outputs))['accuracy/top1']
    assert 0 <= top1 <= 100
    return model


@pytest.mark.parametrize(
    'base,norm_cfg,num_norms',
    [
        (
            'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
            dict(type='DN', r=16, g=1),
            52,
        ),
        (
            'mmpretrain::resnet/resnet18_8xb32_in1k.py',
            dict(type='DN', r=4, g='oup'),
            20,
        ),
    ],
)
def test_dn_in_mmpretrain_own_configs(tmp_path, base, norm_cfg, num_norms):
    cfg = user_config(tmp_path, base, dict(backbone=dict(norm_cfg=norm_cfg)))
    assert cfg.default_scope == 'mmpretrain'
    model = train_then_evaluate(cfg, num_classes=1000)
    norms = [
        m for m in model.backbone.modules() if isinstance(m, DynamicNorm2d)
    ]
    assert len(norms) == num_norms
    assert not any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine
        for m in model.modules()
    )


def test_detector_backbone_in_an_mmpretrain_classifier(tmp_path):
    """MobileNetV2DN (root registry) builds under the mmpretrain scope."""
    cfg = user_config(
        tmp_path,
        'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
        dict(
            backbone=dict(
                _delete_=True,
                type='MobileNetV2DN',
                out_taps=('conv_last',),
                norm_cfg=dict(type='DN', r=16, g='oup'),
            ),
            head=dict(num_classes=10),
        ),
    )
    model = train_then_evaluate(cfg, num_classes=10)
    assert isinstance(model.backbone, MobileNetV2DN)
