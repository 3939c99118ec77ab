"""FNA's SSDLite: neck (mmdet SSDNeck), head, anchors, detector, sizes."""

import math

import pytest
import torch
import torch.nn as nn
from helpers import REPO, run_python
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import dn_mmdet  # noqa: F401
from dn_mmdet.models.dense_heads import FNASSDLiteHead
from dn_mmdet.norm import DynamicNorm2d

BN_CFG = str(REPO / 'configs/ssdlite/ssdlite_mobilenetv2-bn_2xb64-30e_coco.py')
DN_CFG = str(
    REPO / 'configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'
)
FEAT_CHANNELS = (576, 1280, 512, 256, 256, 128)
FEAT_SIZES_320 = (20, 10, 5, 3, 2, 1)


@pytest.fixture(scope='module')
def bn_cfg():
    init_default_scope('mmdet')
    return Config.fromfile(BN_CFG)


@pytest.fixture(scope='module')
def bn_detector(bn_cfg):
    model = MODELS.build(bn_cfg.model)
    model.init_weights()
    return model


def test_neck_is_fna_extra_layers(bn_detector):
    neck = bn_detector.neck
    assert not hasattr(neck, 'l2_norm')
    assert len(neck.extra_layers) == 4
    in_ch = 1280
    for layer, mid, out in zip(
        neck.extra_layers, (256, 128, 128, 64), (512, 256, 256, 128)
    ):
        reduce, sep = layer
        assert (reduce.in_channels, reduce.out_channels) == (in_ch, mid)
        assert reduce.kernel_size == (1, 1)
        dw, pw = sep.depthwise_conv, sep.pointwise_conv
        assert dw.groups == mid and dw.kernel_size == (3, 3)
        assert dw.stride == (2, 2) and dw.padding == 1
        assert (pw.in_channels, pw.out_channels) == (mid, out)
        for cm in (reduce, dw, pw):
            assert cm.conv.bias is None
            assert isinstance(cm.norm, nn.BatchNorm2d) and cm.norm.eps == 1e-3
            assert isinstance(cm.activate, nn.ReLU6)
        in_ch = out


def test_neck_output_shapes(bn_detector):
    bn_detector.eval()
    with torch.no_grad():
        feats = bn_detector.extract_feat(torch.randn(1, 3, 320, 320))
    assert tuple(f.shape[1] for f in feats) == FEAT_CHANNELS
    assert tuple(f.shape[2] for f in feats) == FEAT_SIZES_320


def test_head_predicts_with_bias_free_conv_and_bn(bn_detector):
    head = bn_detector.bbox_head
    assert isinstance(head, FNASSDLiteHead)
    assert head.num_base_priors == [4, 6, 6, 6, 4, 4]
    for branches, per_prior in ((head.cls_convs, 81), (head.reg_convs, 4)):
        assert len(branches) == 6
        for branch, c, a in zip(branches, FEAT_CHANNELS, head.num_base_priors):
            dw, pred = branch
            assert isinstance(dw, ConvModule) and isinstance(pred, ConvModule)
            assert dw.groups == c and dw.kernel_size == (3, 3)
            assert dw.conv.bias is None and isinstance(dw.activate, nn.ReLU6)
            assert (
                pred.kernel_size == (1, 1)
                and pred.out_channels == a * per_prior
            )
            assert pred.conv.bias is None
            assert isinstance(pred.norm, nn.BatchNorm2d)
            assert not pred.with_activation


def test_head_init_follows_fna(bn_detector):
    head = bn_detector.bbox_head
    w = torch.cat(
        [
            m.weight.flatten()
            for m in head.modules()
            if isinstance(m, nn.Conv2d)
        ]
    )
    assert abs(w.std().item() - 0.03) < 0.003
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = torch.cat(
        [
            m.weight.flatten()
            for m in bn_detector.neck.modules()
            if isinstance(m, nn.Conv2d)
        ]
    )
    assert abs(w.std().item() - 0.03) < 0.003


def test_anchors_follow_fna(bn_detector):
    gen = bn_detector.bbox_head.prior_generator
    assert gen.base_sizes == [30, 60, 114, 168, 222, 276]
    assert [s[0] for s in gen.strides] == [16, 32, 64, 107, 160, 320]
    max_sizes = [
        round(b * float(s[1]) ** 2) for b, s in zip(gen.base_sizes, gen.scales)
    ]
    assert max_sizes == [60, 114, 168, 222, 276, 330]
    coder = bn_detector.bbox_head.bbox_coder
    assert tuple(coder.stds) == (0.1, 0.1, 0.2, 0.2)


def _small_head(**kwargs):
    return FNASSDLiteHead(
        num_classes=5,
        in_channels=(8, 16),
        anchor_generator=dict(
            type='SSDAnchorGenerator',
            scale_major=False,
            strides=[16, 32],
            ratios=[[2], [2, 3]],
            min_sizes=[13, 26],
            max_sizes=[26, 49],
        ),
        **kwargs,
    )


@pytest.mark.parametrize('pred_norm_cfg', [None, dict(type='DN')])
def test_head_background_prior(pred_norm_cfg):
    head = _small_head(cls_prior_prob=0.01, pred_norm_cfg=pred_norm_cfg)
    head.init_weights()
    head.eval()
    feats = (torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2))
    with torch.no_grad():
        cls_scores, _ = head(feats)
    for level, score in enumerate(cls_scores):
        # (N, A * (K + 1), H, W) -> per anchor softmax over K + 1 classes.
        probs = score.permute(0, 2, 3, 1).reshape(-1, 6).softmax(-1)
        # Fresh running stats (mean 0, var 1) pass the conv output through,
        # scaled by 1/sqrt(1 + eps); what is left is the shift.
        fg = probs[:, :5].sum(-1)
        assert fg.median().item() == pytest.approx(0.01, rel=0.5), level
        assert torch.all(probs[:, 5] > 0.9)


def test_head_unnormalized_predictions_use_a_biased_conv():
    head = _small_head(normalize_predictions=False, cls_prior_prob=0.01)
    head.init_weights()
    for branches in (head.cls_convs, head.reg_convs):
        for branch in branches:
            pred = branch[1]
            assert pred.norm_name is None and pred.conv.bias is not None
    bias = head.cls_convs[1][1].conv.bias.view(-1, 6)
    assert torch.all(bias[:, :5] == 0)
    assert torch.allclose(bias[:, 5], torch.tensor(math.log(5 * 99.0)))
    # The depthwise convs keep their norm.
    assert head.cls_convs[0][0].norm_name is not None


def test_head_background_prior_default_is_fna_zero_shift():
    head = _small_head()
    head.init_weights()
    for branch in head.cls_convs:
        assert torch.all(branch[1].norm.bias == 0)


@pytest.mark.parametrize('prob', [0, 1, -0.5, 2.0])
def test_head_background_prior_rejects_bad_probability(prob):
    with pytest.raises(ValueError, match='cls_prior_prob'):
        _small_head(cls_prior_prob=prob)


def test_head_background_prior_needs_a_shift():
    head = _small_head(
        cls_prior_prob=0.01, pred_norm_cfg=dict(type='BN', affine=False)
    )
    with pytest.raises(TypeError, match=r'cls_convs\.0.*pred_norm_cfg'):
        head.init_weights()


def test_head_rejects_level_mismatch():
    with pytest.raises(ValueError, match='levels'):
        FNASSDLiteHead(num_classes=3, in_channels=(576, 1280))


def _batch(n=2, size=320):
    inputs = torch.rand(n, 3, size, size) * 255
    samples = []
    for i in range(n):
        s = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        s.gt_instances = InstanceData(
            bboxes=torch.tensor(
                [[20.0, 30.0, 150.0, 200.0], [100.0, 60.0, 300.0, 290.0]]
            ),
            labels=torch.tensor([i, 3]),
        )
        samples.append(s)
    return inputs, samples


@pytest.mark.parametrize('cfg_file', [BN_CFG, DN_CFG])
def test_detector_loss_and_predict(cfg_file):
    init_default_scope('mmdet')
    cfg = Config.fromfile(cfg_file)
    model = MODELS.build(cfg.model)
    model.init_weights()
    inputs, samples = _batch()
    data = model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=samples), training=True
    )
    model.train()
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox'}
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    stem_grad = model.backbone.stem.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        results = model(
            **model.data_preprocessor(
                dict(inputs=list(inputs), data_samples=samples)
            ),
            mode='predict',
        )
    assert len(results) == 2
    pred = results[0].pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred) <= 200
    assert len(pred) == 0 or pred.scores.min() >= 0.02


def test_dn_config_puts_dn_in_backbone_only():
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(DN_CFG).model)
    dn = [n for n, m in model.named_modules() if isinstance(m, DynamicNorm2d)]
    assert len(dn) == 52 and all(n.startswith('backbone.') for n in dn)
    for part in (model.neck, model.bbox_head):
        assert not any(isinstance(m, DynamicNorm2d) for m in part.modules())


def test_paper_sizes(get_flops):
    """The paper's Table 5: 4.32M / 6.33M params, both 0.81G MAdds @320."""
    bn_params, bn_madds = get_flops.model_complexity(
        Config.fromfile(BN_CFG), (320, 320)
    )
    dn_params, dn_madds = get_flops.model_complexity(
        Config.fromfile(DN_CFG), (320, 320)
    )
    assert round(bn_params / 1e6, 2) == 4.32
    assert round(dn_params / 1e6, 2) == 6.33
    assert round(bn_madds / 1e9, 2) == 0.81
    assert round(dn_madds / 1e9, 2) == 0.81
    # DN's SC-Modules are counted, and they are cheap.
    assert 0 < dn_madds - bn_madds < 0.005e9


def test_count_madds_by_hand(get_flops):
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    madds = get_flops.count_madds(net, torch.randn(2, 3, 8, 8))
    # 27*8 per location * 16 + 9*8 * 16 + 128*10, per sample.
    assert madds == 27 * 8 * 16 + 9 * 8 * 16 + 128 * 10
    assert get_flops.count_params(net) == 216 + 72 + 8 + 1280 + 10


@pytest.mark.slow
def test_get_flops_cli():
    proc = run_python(
        ['tools/analysis/get_flops.py', BN_CFG, '--shape', '320'], cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'Params: 4.32M (4,322,988)' in out
    assert 'MAdds: 0.81G' in out
    assert 'Input shape: (3, 320, 320)' in out
