"""DN under ``torch.compile(fullgraph=True)``, ``torch.export`` and the
ONNX exporter, as users run them: compiled equals eager (outputs,
gradients, running statistics), in training and in eval.

Small inputs, and ``backend='aot_eager'`` (torch's graph capture and
autograd tracing without inductor's code generation, which takes minutes
on a busy CPU) except for one inductor test on a small model.
"""

import copy

import pytest
import torch
import torch.nn as nn
from dn_helpers import randomize
from helpers import SHAPES_CONFIGS
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import dn_mmdet  # noqa: F401  (registers DN and the models)
from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.norm import DynamicNorm2d, FusedNormActConvModule, fuse_norm_act

SSDLITE_DN = SHAPES_CONFIGS['dn']


def randomized(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, DynamicNorm2d):
            randomize(m)
    return model


def flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_compiled_equals_eager(model, x, backend='aot_eager'):
    """Train step (forward, backward) then eval under no_grad: the compiled
    copy's outputs, gradients and statistics equal the eager copy's."""
    eager, compiled = model, copy.deepcopy(model)
    run = torch.compile(compiled, fullgraph=True, backend=backend)
    tol = dict(rtol=1e-4, atol=1e-4)
    eager.train(), compiled.train()
    ys, ys_c = flat(eager(x)), flat(run(x))
    sum(y.square().mean() for y in ys).backward()
    sum(y.square().mean() for y in ys_c).backward()
    for y, y_c in zip(ys, ys_c):
        torch.testing.assert_close(y_c, y, **tol)
    for (name, p), p_c in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p_c.grad, p.grad, **tol, msg=name)
    for (name, b), b_c in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b_c, b, **tol, msg=name)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        for y, y_c in zip(flat(eager(x)), flat(run(x))):
            torch.testing.assert_close(y_c, y, **tol)


@pytest.mark.slow
def test_compiled_mmdet_resnet18_with_dn_equals_eager():
    torch.manual_seed(0)
    init_default_scope('mmdet')
    model = randomized(
        MODELS.build(
            dict(
                type='ResNet',
                depth=18,
                out_indices=(3,),
                norm_cfg=dict(type='DN', g='oup'),
                norm_eval=False,
            )
        )
    )
    assert_compiled_equals_eager(model, torch.randn(2, 3, 32, 32))


@pytest.mark.slow
def test_compiled_ssdlite_shapes_detector_equals_eager():
    """The shapes SSDLite: MobileNetV2DN (fused by construction), SSD neck,
    FNA head; its whole tensor forward (MobileNetV2DN's compile test too:
    compiling it twice would double the suite's longest test)."""
    torch.manual_seed(0)
    init_default_scope('mmdet')
    detector = MODELS.build(Config.fromfile(str(SSDLITE_DN)).model)
    assert isinstance(detector.backbone, MobileNetV2DN)
    assert (
        sum(isinstance(m, FusedNormActConvModule) for m in detector.modules())
        == 35
    )
    randomized(detector)

    class TensorForward(nn.Module):
        def __init__(self, detector):
            super().__init__()
            self.detector = detector

        def forward(self, x):
            cls_scores, bbox_preds = self.detector._forward(x)
            return list(cls_scores) + list(bbox_preds)

    assert_compiled_equals_eager(
        TensorForward(detector), torch.randn(2, 3, 64, 64)
    )


@pytest.mark.slow
def test_inductor_compiles_a_dn_model_in_training_and_eval():
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvModule(
            3, 8, 3, norm_cfg=dict(type='DN', r=2), act_cfg=dict(type='ReLU6')
        )
    )
    fuse_norm_act(model)
    assert_compiled_equals_eager(
        randomized(model), torch.randn(2, 3, 10, 10), backend='inductor'
    )


def dn_conv_module():
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvModule(
            3,
            8,
            3,
            norm_cfg=dict(type='DN', g='oup'),
            act_cfg=dict(type='ReLU6'),
        )
    ).eval()
    return randomized(model)


@pytest.mark.parametrize('fused', [False, True])
def test_export_of_a_conv_module_with_dn_under_no_grad(fused):
    """Main: ``native_batch_norm(): functions with out=...``. The exported
    program holds DN's op (its fake kernel gave the shapes) and computes
    what the module does."""
    model = dn_conv_module()
    if fused:
        fuse_norm_act(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        targets = [str(n.target) for n in program.graph.nodes]
        assert 'dn_mmdet.dn_b_inference.default' in targets
        assert any('hardtanh' in t for t in targets) != fused
        x2 = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(program.module()(x2), model(x2))


def test_jit_trace_and_onnx_export(tmp_path):
    """``torch.jit`` tracing (the ONNX exporter without dynamo) sees the
    composite's ATen ops: ONNX needs no DN op."""
    model = dn_conv_module()
    x = torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(model, x)
    x2 = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(traced(x2), model(x2))
    onnx = pytest.importorskip('onnx')
    path = tmp_path / 'dn.onnx'
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        input_names=['x'],
        output_names=['y'],
    )
    onnx.checker.check_model(onnx.load(str(path)))
