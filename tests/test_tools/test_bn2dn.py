"""tools/model_converters/bn2dn.py on real checkpoint files: conversion (in
a process of its own, as users run it), and the checkpoints it must refuse
(in this process, through the tool's ``main``)."""
import os
import pickle
import sys

import pytest
import torch
import torch.nn as nn
from helpers import REPO, TOOLS, load_module, run_python
from mmcv.cnn import ConvModule
from mmdet.models.backbones import MobileNetV2

import dn_mmdet  # noqa: F401  (registers DN)



class Detector(nn.Module):
    """A backbone and a neck, as a detector's checkpoint names them."""

    def __init__(self, backbone_norm, neck_norm):
        super().__init__()
        self.backbone = MobileNetV2(out_indices=(2, ), norm_cfg=backbone_norm)
        self.neck = ConvModule(32, 16, 3, padding=1, norm_cfg=neck_norm)

    def forward(self, x):
        return self.neck(self.backbone(x)[0])


def randomized(model, seed=0):
    """Non-trivial statistics and affines in every BN (DN's own too)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
    return model.eval()


def bn2dn_process(*args):
    return run_python([TOOLS / 'model_converters/bn2dn.py', *args],
                      cwd=REPO,
                      timeout=300)


def bn2dn(monkeypatch, *args):
    """Run the tool's ``main`` here; returns its exit message or None."""
    tool = load_module(TOOLS / 'model_converters/bn2dn.py')
    monkeypatch.setattr(sys, 'argv', ['bn2dn.py', *map(str, args)])
    try:
        tool.main()
    except SystemExit as exit_:
        assert isinstance(exit_.code, str)  # a message: exit status 1
        return exit_.code
    return None


def test_bn_checkpoint_converts_to_an_equivalent_dn_checkpoint(tmp_path):
    """A BN model's checkpoint, converted, loads strictly into the DN model,
    which then computes what the BN model did."""
    bn_model = randomized(Detector(dict(type='BN'), dict(type='BN')))
    src, dst = tmp_path / 'bn.pth', tmp_path / 'dn.pth'
    torch.save(dict(state_dict=bn_model.state_dict(), meta=dict(epoch=1),
                    optimizer=dict(state={})), src)
    proc = bn2dn_process(src, dst, '--r', '8', '--g', '1')
    assert proc.returncode == 0, proc.stderr
    assert 'bn2dn: 53 BN layers' in proc.stdout
    dn_model = Detector(dict(type='DN', r=8, g=1), dict(type='DN', r=8, g=1))
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta'] == dict(epoch=1)
    assert 'optimizer' not in checkpoint
    dn_model.load_state_dict(checkpoint['state_dict'], strict=True)
    dn_model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dn_model(x), bn_model(x), rtol=1e-5,
                               atol=1e-5)


def test_prefix_converts_only_the_bn_part_of_a_mixed_checkpoint(
        tmp_path, monkeypatch):
    """The paper's detector: DN backbone, BN neck. ``--prefix neck.``
    converts the neck; the DN backbone's keys are kept as they are."""
    model = randomized(Detector(dict(type='DN'), dict(type='BN')))
    src, dst = tmp_path / 'mixed.pth', tmp_path / 'dn.pth'
    torch.save(model.state_dict(), src)
    assert bn2dn(monkeypatch, src, dst, '--prefix', 'neck.', '--r', '16',
                 '--g', '1') is None
    target = Detector(dict(type='DN'), dict(type='DN'))
    target.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    target.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(x), model(x), rtol=1e-5, atol=1e-5)


def test_refuses_a_checkpoint_that_already_holds_dn_layers(
        tmp_path, monkeypatch):
    """Converting the DN model's checkpoint (again) would nest DN layers:
    refused, naming the DN keys; nothing is written."""
    model = randomized(Detector(dict(type='DN'), dict(type='BN')))
    src, dst = tmp_path / 'mixed.pth', tmp_path / 'dn.pth'
    torch.save(dict(state_dict=model.state_dict()), src)
    message = bn2dn(monkeypatch, src, dst)
    assert 'already holds 52 DN layer(s)' in message
    assert 'backbone.conv1.dn.base_scale' in message
    assert 'BN layers are under neck.' in message
    assert not dst.exists()


def test_refuses_a_prefix_without_batch_norms(tmp_path, monkeypatch):
    model = randomized(Detector(dict(type='BN'), dict(type='BN')))
    src, dst = tmp_path / 'bn.pth', tmp_path / 'dn.pth'
    torch.save(dict(state_dict=model.state_dict()), src)
    message = bn2dn(monkeypatch, src, dst, '--prefix', 'bbox_head.')
    assert "no BN layer under the prefix 'bbox_head.'" in message
    assert 'BN layers are under backbone., neck.' in message
    assert not dst.exists()


def test_loads_through_the_projects_checkpoint_loader(tmp_path, monkeypatch):
    """The checkpoint is read by mmengine's loader, which dn_mmdet makes
    weights-only and which names the file it refuses."""
    src = tmp_path / 'evil.pth'
    torch.save(dict(state_dict={}, hook=os.getcwd), src)
    with pytest.raises(pickle.UnpicklingError) as err:
        bn2dn(monkeypatch, src, tmp_path / 'dn.pth')
    assert f'Refusing to load checkpoint {src}' in str(err.value)
    assert 'posix.getcwd' in str(err.value)
    assert not (tmp_path / 'dn.pth').exists()
