"""fuse_norm_act: a clamp folded into the DN layer before it, explicitly and
only where the model then computes exactly what it computed before."""

import copy

import pytest
import torch
import torch.nn as nn
from dn_helpers import randomize, recorded_dn_ops
from mmcv.cnn import ConvModule

import dn_mmdet  # noqa: F401  (registers DN and the backbone)
from dn_mmdet.models.backbones import MobileNetV2DN
from dn_mmdet.norm import DynamicNorm2d, FusedNormActConvModule, fuse_norm_act
from dn_mmdet.norm.functional import clamp_bounds


def conv_stack(
    norm_cfg=dict(type='DN', g='oup'),
    act_cfg=dict(type='ReLU6'),
    order=('conv', 'norm', 'act'),
):
    torch.manual_seed(8)
    model = nn.Sequential(
        ConvModule(
            3,
            16,
            3,
            padding=1,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
            order=order,
        ),
        ConvModule(16, 24, 1, norm_cfg=norm_cfg, act_cfg=None),
        ConvModule(
            24,
            8,
            3,
            padding=1,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
            order=order,
        ),
    )
    for m in model.modules():
        if isinstance(m, DynamicNorm2d):
            randomize(m)
    return model


def outputs_and_grads(model, x, **kwargs):
    x = x.clone().requires_grad_(True)
    y = model[0](x, **kwargs) if kwargs else model(x)
    y.square().sum().backward()
    grads = [
        None if p.grad is None else p.grad.clone() for p in model.parameters()
    ]
    model.zero_grad()
    return y.detach(), x.grad, grads


def assert_same(a, b):
    for u, v in zip(a[:2], b[:2]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    for u, v in zip(a[2], b[2]):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('training', [True, False])
def test_fusion_keeps_outputs_grads_and_keys(training):
    model = conv_stack()
    fused = copy.deepcopy(model)
    assert fuse_norm_act(fused) == 2
    assert [type(m) for m in fused] == [
        FusedNormActConvModule,
        ConvModule,
        FusedNormActConvModule,
    ]
    assert list(fused.state_dict()) == list(model.state_dict())
    model.train(training), fused.train(training)
    x = torch.randn(3, 3, 10, 10)
    assert_same(outputs_and_grads(fused, x), outputs_and_grads(model, x))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    for name, buf in model.named_buffers():
        torch.testing.assert_close(fused.get_buffer(name), buf)
    assert fuse_norm_act(fused) == 0  # nothing left to fuse


def test_fused_module_applies_the_clamp_in_the_dn_op():
    """In eval, conv + DN + ReLU6 is the conv and one DN op: no clamp op."""
    fused = conv_stack()
    fuse_norm_act(fused)
    fused.eval()
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused[0](torch.randn(2, 3, 8, 8))
    names = [e.name for e in prof.events()]
    assert names.count('dn_mmdet::dn_b_inference') == 1
    assert not any('hardtanh' in n or 'clamp' in n for n in names)


def test_only_exact_types_and_orders_are_fused():
    assert fuse_norm_act(conv_stack(order=('conv', 'act', 'norm'))) == 0
    assert fuse_norm_act(conv_stack(act_cfg=dict(type='SiLU'))) == 0
    bn_model = conv_stack(norm_cfg=dict(type='BN'))
    assert fuse_norm_act(bn_model) == 0
    assert type(bn_model[0]) is ConvModule


def test_relu_subclass_with_its_own_forward_is_not_fused():
    """Main fused an ``nn.ReLU`` subclass as a bare clamp."""

    class LeakyishReLU(nn.ReLU):
        def forward(self, x):
            return torch.where(x > 0, x, 0.1 * x)

    model = conv_stack()
    model[0].activate = LeakyishReLU()
    reference = copy.deepcopy(model)
    assert clamp_bounds(model[0].activate) is None
    assert fuse_norm_act(model) == 1  # model[2] only
    assert type(model[0]) is ConvModule
    x = torch.randn(2, 3, 8, 8)
    assert_same(outputs_and_grads(model, x), outputs_and_grads(reference, x))


def test_forward_hook_on_the_dn_sees_its_output_before_the_clamp():
    """Main ran a DN forward hook after the fused clamp and lost the ReLU
    the hook's caller expected to follow."""
    model = conv_stack()
    reference = copy.deepcopy(model)
    fuse_norm_act(model)
    seen, seen_ref = [], []
    # clones: the ConvModule's ReLU6 then runs in place on the output
    model[0].norm.register_forward_hook(lambda m, a, y: seen.append(y.clone()))
    reference[0].norm.register_forward_hook(
        lambda m, a, y: seen_ref.append(y.clone())
    )
    x = torch.randn(2, 3, 8, 8)
    assert_same(outputs_and_grads(model, x), outputs_and_grads(reference, x))
    torch.testing.assert_close(seen[0], seen_ref[0])
    assert seen[0].min() < 0  # not clamped: the ConvModule's ReLU6 follows


@pytest.mark.parametrize(
    'kwargs',
    [dict(activate=False), dict(norm=False), dict(activate=False, norm=False)],
)
def test_activate_and_norm_flags_keep_their_meaning(kwargs):
    """Main's fused ConvModule kept its clamp with ``activate=False`` and
    lost it with ``norm=False``."""
    model = conv_stack()
    reference = copy.deepcopy(model)
    fuse_norm_act(model)
    x = torch.randn(2, 3, 8, 8)
    assert_same(
        outputs_and_grads(model, x, **kwargs),
        outputs_and_grads(reference, x, **kwargs),
    )
    if not kwargs.get('activate', True):
        assert model[0](x, **kwargs).min() < 0


def test_module_with_arguments_is_left_as_built():
    """Main fx-traced a parent at its default arguments and clamped calls
    made with others; only ConvModules are fused, by their own flags."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dn = randomize(DynamicNorm2d(8, r=2))
            self.relu = nn.ReLU()

        def forward(self, x, activate=True):
            y = self.dn(x)
            return self.relu(y) if activate else y

    block = Block()
    assert fuse_norm_act(block) == 0
    x = torch.randn(2, 8, 4, 4)
    assert block(x, activate=False).min() < 0


def test_dn_shared_by_two_parents_is_not_fused():
    """Main clamped a DN shared by a clamping and a non-clamping parent in
    both."""
    model = conv_stack()
    plain = nn.Sequential(model[0].conv, model[0].norm)  # no clamp
    both = nn.ModuleDict(dict(fused=model, plain=plain))
    assert fuse_norm_act(both) == 1  # model[2] only
    assert type(model[0]) is ConvModule
    x = torch.randn(2, 3, 8, 8)
    assert plain(x).min() < 0


def test_mobilenet_v2_dn_is_fused_by_construction_and_exact():
    """Every ReLU6 after a DN (stem, 17 depthwise, 16 expansion convs,
    conv_last) is fused; the 17 linear projections are not. The fused model
    computes what the unfused one does (a no-op forward hook on each DN
    makes its module run unfused)."""
    model = MobileNetV2DN(norm_cfg=dict(type='DN', r=16, g=1))
    fused = [
        m for m in model.modules() if isinstance(m, FusedNormActConvModule)
    ]
    assert len(fused) == 35
    for m in model.modules():
        if isinstance(m, DynamicNorm2d):
            randomize(m)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), recorded_dn_ops() as ops:
        fast = model(x)
    assert ops == ['dn_mmdet::dn_b_inference'] * 52
    for m in fused:
        m.norm.register_forward_hook(lambda *args: None)
    with torch.no_grad():
        unfused = model(x)
    for a, b in zip(fast, unfused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_checkpoint_of_a_fused_run_loads_strictly_into_unfused_models(
    tmp_path, toy
):
    """A run fused by ``FuseNormActHook`` writes a checkpoint with the keys
    and the DN options record of the unfused model: it loads strictly into
    an unfused model, whose own checkpoint loads strictly back into the
    fused one, with the same outputs every way; the record is still checked
    after fusion (a fused model refuses another ``eps``)."""
    from mmengine.runner import load_checkpoint, save_checkpoint

    from dn_mmdet.utils import safe_checkpoint_loading
    from dn_mmdet.utils.checkpoint import OPTIONS_KEY

    norm_cfg = dict(type='DN', r=4)
    runner = toy.build_runner(
        tmp_path / 'work',
        model=toy.ToyNet(norm_cfg),
        max_epochs=1,
        custom_hooks=[dict(type='FuseNormActHook')],
    )
    runner.train()
    fused = runner.model.backbone
    assert [type(m) for m in fused] == [FusedNormActConvModule] * 2
    ckpt = str(tmp_path / 'work' / 'epoch_1.pth')
    x = torch.randn(2, 3, 8, 8)

    unfused = toy.ToyNet(norm_cfg)
    with safe_checkpoint_loading():
        load_checkpoint(unfused, ckpt, strict=True)
    assert [type(m) for m in unfused.backbone] == [ConvModule] * 2
    runner.model.eval(), unfused.eval()
    with torch.no_grad():
        expected = runner.model.backbone(x)
        torch.testing.assert_close(unfused.backbone(x), expected)
    assert unfused.state_dict()._metadata['backbone.0.dn'][OPTIONS_KEY]

    back = tmp_path / 'unfused.pth'
    save_checkpoint(dict(state_dict=unfused.state_dict()), str(back))
    refused = toy.ToyNet(dict(norm_cfg, eps=1e-3))
    fuse_norm_act(refused)
    with pytest.raises(RuntimeError, match='eps'):
        load_checkpoint(refused, str(back), strict=True)
    again = toy.ToyNet(norm_cfg)
    assert fuse_norm_act(again) == 2
    load_checkpoint(again, str(back), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again.eval().backbone(x), expected)
