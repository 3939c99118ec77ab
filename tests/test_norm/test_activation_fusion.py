"""Activation fusion in any model, on its first forward (activation_fusion.py).

ConvModule's fusion and MobileNetV2DN's are in test_dynamic_norm_inference.py.
"""
import copy

import pytest
import torch
import torch.nn as nn
from dn_helpers import randomize
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from torch.nn.modules import module as torch_module

from dn_mmdet.norm import DynamicNorm2d, activation_fusion
from dn_mmdet.norm.activation_fusion import (FusedReLU, fuse_activations,
                                             is_fusion_hook)

register_all_modules()


def resnet18(norm_cfg):
    torch.manual_seed(0)
    model = MODELS.build(
        dict(type='ResNet', depth=18, norm_cfg=norm_cfg, norm_eval=False,
             out_indices=(0, 1, 2, 3)))
    for m in model.modules():
        if isinstance(m, DynamicNorm2d):
            randomize(m)
    return model.double()


def unfused_copy(model, monkeypatch):
    """A copy of ``model`` whose first forward ran with fusion off."""
    copied = copy.deepcopy(model)
    copied.eval()  # its statistics stay as they are
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv('DN_MMDET_FUSED', '0')
        copied(torch.zeros(2, 3, 32, 32, dtype=torch.float64))
    return copied


def fused_layers(model):
    return [m for m in model.modules()
            if isinstance(m, DynamicNorm2d) and m.activation is not None]


@pytest.mark.parametrize('training', [True, False])
def test_resnet_gets_its_relus_fused_on_the_first_forward(
        training, monkeypatch):
    """mmdet's ResNet-18 with DN via norm_cfg: the stem's ReLU and each
    block's first ReLU (a ReLU the block shares with two other call sites)
    are fused on the first forward; outputs, gradients and the state dict
    stay those of the unfused model."""
    model = resnet18(dict(type='DN', g='oup'))
    reference = unfused_copy(model, monkeypatch)
    assert fused_layers(reference) == []
    model.train(training)
    reference.train(training)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs, ref_outs = model(x1), reference(x2)
    # stem + the first norm of each of the 8 blocks; not the second norm
    # (its output is added to the identity first) nor the downsamples
    assert len(fused_layers(model)) == 9
    assert type(model.relu) is FusedReLU
    assert type(model.layer1[0].relu) is FusedReLU
    assert model.layer1[0].norm1.activation is model.layer1[0].relu
    assert model.layer1[0].norm2.activation is None
    assert list(model.state_dict()) == list(reference.state_dict())
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    sum(o.square().sum() for o in outs).backward()
    sum(o.square().sum() for o in ref_outs).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-9)
    for (name, p), (_, q) in zip(model.named_parameters(),
                                 reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-9,
                                   msg=name)
    # the model's layers no longer wait; the process-wide hook stays only
    # while some layer (of a model not yet called) still waits
    assert not any(m in activation_fusion._pending for m in model.modules())
    hooked = any(is_fusion_hook(h) for h in
                 torch_module._global_forward_pre_hooks.values())
    assert hooked == bool(activation_fusion._pending)


class TwoUsers(nn.Module):
    """DN's output goes to the ReLU and to the sum: not fusable."""

    def __init__(self):
        super().__init__()
        self.norm = DynamicNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.norm(x)
        return self.relu(y) + y


class DataDependent(nn.Module):
    """A forward torch.fx cannot trace: left as it is."""

    def __init__(self):
        super().__init__()
        self.norm = DynamicNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:
            return self.relu(self.norm(x))
        return self.norm(x)


class ModifiedInBetween(nn.Module):
    """DN -> ReLU, but the caller may change DN's output in place before the
    ReLU sees it again: the fused ReLU must clamp that input."""

    def __init__(self):
        super().__init__()
        self.norm = DynamicNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.norm(x))


def test_only_exact_pairs_are_fused():
    assert fuse_activations(TwoUsers()) == 0
    assert fuse_activations(DataDependent()) == 0
    assert fuse_activations(nn.Sequential(DynamicNorm2d(8), nn.SiLU())) == 0
    sequential = nn.Sequential(DynamicNorm2d(8), nn.ReLU6(), nn.ReLU())
    assert fuse_activations(sequential) == 1
    assert sequential[0].activation is sequential[1]
    assert fuse_activations(sequential) == 0  # nothing left


def test_fused_clamp_passes_only_unmodified_clamped_inputs():
    torch.manual_seed(0)
    block = ModifiedInBetween()
    assert fuse_activations(block) == 1
    x = torch.randn(2, 8, 5, 5)
    y = block.norm(x)
    assert y.min() >= 0
    assert block.relu(y) is y  # already clamped: passed through
    y.sub_(1)  # changed in place: the tag no longer holds
    torch.testing.assert_close(block.relu(y), y.clamp_min(0))
    fresh = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block.relu(fresh), fresh.clamp_min(0))


def test_no_fusion_when_fast_paths_are_off(monkeypatch):
    model = nn.Sequential(DynamicNorm2d(8), nn.ReLU())
    monkeypatch.setenv('DN_MMDET_FUSED', '0')
    model(torch.randn(2, 8, 3, 3))
    monkeypatch.delenv('DN_MMDET_FUSED')
    model(torch.randn(2, 8, 3, 3))
    assert model[0].activation is None
    assert type(model[1]) is nn.ReLU


def test_waiting_layers_do_not_cost_the_kernel(counted_kernel):
    """A DN model built but never called keeps the first-forward hook
    installed; other models' DN layers still use the C++ kernel (the hook
    is not a user's hook that must see every call)."""
    waiting = nn.Sequential(DynamicNorm2d(8), nn.ReLU())  # noqa: F841
    assert any(is_fusion_hook(h) for h in
               torch_module._global_forward_pre_hooks.values())
    dn = DynamicNorm2d(8).eval()
    with torch.no_grad():
        dn(torch.randn(2, 8, 3, 3))
    assert counted_kernel.dn_b_calls == 1
