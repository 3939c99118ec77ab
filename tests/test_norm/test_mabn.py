"""MABN against its algorithm (float64): forward, its own backward (the
formula, not autograd), window and warm-up transitions, the renormalisation
clamp, the running estimate, eval, and exact continuation after a
checkpoint taken in the middle of a window."""

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.cnn.utils import fuse_conv_bn
from mmengine.model import convert_sync_batchnorm
from mmengine.optim import DefaultOptimWrapperConstructor

from dn_mmdet.norm import MABN2d
from dn_mmdet.norm.base import name_norm_layers

EPS = 1e-5


class MABNAlgorithm:
    """MABN step by step, written from the paper's Algorithm 1 / the
    reference code, with plain Python state (float64).

    ``forward`` then ``backward`` per iteration; ``keep`` is the reference's
    momentum (running = keep * running + (1 - keep) * v), None for the
    cumulative average.
    """

    def __init__(self, c, m, warmup, renorm_warmup, clip, keep, eps=EPS):
        self.m, self.warmup, self.eps = m, warmup, eps
        self.renorm_warmup, self.clip, self.keep = renorm_warmup, clip, keep
        self.t = 0
        self.buffer_x2 = [torch.zeros(c, dtype=torch.float64)] * m
        self.buffer_gz = [torch.zeros(c, dtype=torch.float64)] * m
        self.running_var = torch.ones(c, dtype=torch.float64)
        self.r_history = []

    def _use_current(self):
        return self.t <= self.m or self.t < self.warmup

    def forward(self, x, gamma, beta):
        self.t += 1
        chi = (x * x).mean(dim=(0, 2, 3))
        self.buffer_x2[self.t % self.m] = chi
        v = chi if self._use_current() else torch.stack(self.buffer_x2).mean(0)
        std = torch.sqrt(v + self.eps)
        z = x / std.view(1, -1, 1, 1)
        r = std / torch.sqrt(self.running_var + self.eps)
        if self.t <= max(self.renorm_warmup, self.warmup):
            r = torch.ones_like(r)
        else:
            r = r.clamp(1 / self.clip, self.clip)
        self.r_history.append(r)
        if self.keep is None:
            self.running_var = (
                self.running_var + (v - self.running_var) / self.t
            )
        else:
            self.running_var = (
                self.keep * self.running_var + (1 - self.keep) * v
            )
        self.saved = (z, std, r, gamma)
        return (gamma * r).view(1, -1, 1, 1) * z + beta.view(1, -1, 1, 1)

    def backward(self, grad_y):
        z, std, r, gamma = self.saved
        g = grad_y * (gamma * r).view(1, -1, 1, 1)
        psi = (g * z).mean(dim=(0, 2, 3))
        self.buffer_gz[self.t % self.m] = psi
        psi_bar = (
            psi if self._use_current() else torch.stack(self.buffer_gz).mean(0)
        )
        grad_x = (g - z * psi_bar.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        grad_gamma = (grad_y * r.view(1, -1, 1, 1) * z).sum(dim=(0, 2, 3))
        return grad_x, grad_gamma, grad_y.sum(dim=(0, 2, 3))


def batch(t, shape=(2, 4, 3, 5)):
    """Iteration t's input and output gradient. The input's scale switches
    between 3 and 0.2 every three iterations, so the window average differs
    from the current batch and r reaches both clip bounds."""
    g = torch.Generator().manual_seed(100 + t)
    scale = 3.0 if (t // 3) % 2 == 0 else 0.2
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + 0.3
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return x.requires_grad_(True), grad


def new_layer(**kwargs):
    args = dict(
        batch_size=2,
        real_batch_size=6,
        warmup_iters=5,
        renorm_warmup_iters=8,
        renorm_clip=1.5,
        momentum=0.02,
    )
    args.update(kwargs)
    layer = MABN2d(4, **args).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        layer.weight.copy_(
            1 + 0.5 * torch.randn(4, generator=g, dtype=torch.float64)
        )
        layer.bias.copy_(
            0.5 * torch.randn(4, generator=g, dtype=torch.float64)
        )
    return layer


def step(layer, t):
    x, grad = batch(t)
    y = layer(x)
    grads = torch.autograd.grad(y, [x, layer.weight, layer.bias], grad)
    return y.detach(), grads


@pytest.mark.parametrize('warmup, keep', [(5, 0.98), (0, 0.98), (5, None)])
def test_training_matches_algorithm(warmup, keep):
    """14 iterations with m = 3: the current batch (t <= 3, and t = 4 while
    t < warm-up 5), then the window; r = 1 up to t = 8, then clipped."""
    layer = new_layer(
        warmup_iters=warmup, momentum=None if keep is None else 1 - keep
    )
    algo = MABNAlgorithm(
        4, m=3, warmup=warmup, renorm_warmup=8, clip=1.5, keep=keep
    )
    gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
    for t in range(1, 15):
        y, (gx, gg, gb) = step(layer, t)
        x, grad = batch(t)
        y_ref = algo.forward(x.detach(), gamma, beta)
        gx_ref, gg_ref, gb_ref = algo.backward(grad)
        msg = f'iteration {t}'
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10, msg=msg)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10, msg=msg)
        torch.testing.assert_close(gg, gg_ref, rtol=1e-10, atol=1e-10, msg=msg)
        torch.testing.assert_close(gb, gb_ref, rtol=1e-10, atol=1e-10, msg=msg)
        torch.testing.assert_close(
            layer.bn.running_var,
            algo.running_var,
            rtol=1e-12,
            atol=1e-12,
            msg=msg,
        )
        torch.testing.assert_close(
            layer.buffer_x2, torch.stack(algo.buffer_x2), msg=msg
        )
        torch.testing.assert_close(
            layer.buffer_gz, torch.stack(algo.buffer_gz), msg=msg
        )
        assert int(layer.bn.num_batches_tracked) == t
    assert torch.equal(layer.bn.running_mean, torch.zeros(4))
    # The test covered what it claims: r was 1, then hit both bounds.
    r = torch.stack(algo.r_history)
    assert (r[:8] == 1).all()
    assert (r[8:] == 1.5).any() and (r[8:] == 1 / 1.5).any()


def test_channels_last_input():
    dense, channels_last = new_layer(), new_layer()
    for t in range(1, 6):
        x, grad = batch(t)
        y = dense(x)
        gx = torch.autograd.grad(y, x, grad)[0]
        x_cl = x.detach().to(memory_format=torch.channels_last)
        x_cl.requires_grad_(True)
        y_cl = channels_last(x_cl)
        gx_cl = torch.autograd.grad(y_cl, x_cl, grad)[0]
        torch.testing.assert_close(y_cl, y)
        torch.testing.assert_close(gx_cl, gx)


def test_backward_is_the_algorithms_not_autograd():
    """While v is the current batch's, the custom backward is the exact
    gradient of y (r constant); once v averages the window it is not:
    the gradient statistic is averaged instead."""
    layer = new_layer(renorm_warmup_iters=0, warmup_iters=0)

    def autograd_of_forward(x, grad, window_x2):
        chi = (x * x).mean(dim=(0, 2, 3))
        v = chi if window_x2 is None else (window_x2.sum(0) + chi) / 3
        std = torch.sqrt(v + EPS)
        r = (
            (std / torch.sqrt(running_before + EPS))
            .clamp(1 / 1.5, 1.5)
            .detach()
        )
        y = (layer.weight * r).view(1, -1, 1, 1) * x / std.view(
            1, -1, 1, 1
        ) + layer.bias.view(1, -1, 1, 1)
        return torch.autograd.grad(y, x, grad)[0]

    for t in range(1, 6):
        running_before = layer.bn.running_var.clone()
        others = layer.buffer_x2[[i for i in range(3) if i != t % 3]].clone()
        _, (gx, _, _) = step(layer, t)
        x, grad = batch(t)
        if t <= 3:
            torch.testing.assert_close(gx, autograd_of_forward(x, grad, None))
        else:
            exact = autograd_of_forward(x, grad, others)
            assert not torch.allclose(gx, exact, rtol=1e-3, atol=1e-3)


def test_eval_is_bn_inference_with_zero_mean():
    layer = new_layer()
    for t in range(1, 5):
        step(layer, t)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    x, grad = batch(20)
    y = layer(x)
    expected = layer.weight.view(1, -1, 1, 1) * x / torch.sqrt(
        layer.bn.running_var + EPS
    ).view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    y.backward(grad)  # eval with gradients (norm_eval training)
    assert layer.weight.grad is not None and x.grad is not None
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        torch.testing.assert_close(layer.to_batchnorm()(x), y)


def test_eval_folds_into_the_conv():
    block = ConvModule(
        3,
        4,
        3,
        padding=1,
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=2, real_batch_size=4),
        act_cfg=None,
    ).double()
    for _ in range(1, 4):
        block(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    block.eval()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        folded = fuse_conv_bn(MABN2d.convert_to_batchnorm(block))
        assert isinstance(folded.mabn, nn.Identity)
        assert folded.conv.bias is not None
        torch.testing.assert_close(folded(x), expected)


def test_resume_in_the_middle_of_a_window_continues_exactly(tmp_path):
    """Save at t = 7 (window m = 3: mid-window), load into a fresh layer
    through a file, continue both: identical outputs, gradients, buffers."""
    a = new_layer()
    sgd = torch.optim.SGD(a.parameters(), lr=0.1)

    def train_step(layer, opt, t):
        opt.zero_grad()
        x, grad = batch(t)
        y = layer(x)
        y.backward(grad)
        opt.step()
        return y.detach(), x.grad

    for t in range(1, 8):
        train_step(a, sgd, t)
    path = tmp_path / 'mabn.pth'
    torch.save(
        dict(state_dict=a.state_dict(), optimizer=sgd.state_dict()), path
    )
    b = new_layer()
    b.load_state_dict(torch.load(path)['state_dict'])
    sgd_b = torch.optim.SGD(b.parameters(), lr=0.1)
    sgd_b.load_state_dict(torch.load(path)['optimizer'])
    assert int(b.bn.num_batches_tracked) == 7
    for t in range(8, 14):
        ya, ga = train_step(a, sgd, t)
        yb, gb = train_step(b, sgd_b, t)
        assert torch.equal(ya, yb) and torch.equal(ga, gb), t
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    # The windows matter: without them the continuation differs.
    saved = torch.load(path)['state_dict']
    full, partial = new_layer(), new_layer()
    full.load_state_dict(saved)
    partial.load_state_dict(
        {k: v for k, v in saved.items() if not k.startswith('buffer_')},
        strict=False,
    )
    x, _ = batch(8)
    with torch.no_grad():
        assert not torch.allclose(full(x), partial(x))


def test_no_grad_training_forward_counts_and_updates_forward_state():
    layer = new_layer()
    with torch.no_grad():
        layer(batch(1)[0])
    assert int(layer.bn.num_batches_tracked) == 1
    assert layer.buffer_x2.abs().sum() > 0
    assert layer.buffer_gz.abs().sum() == 0


def test_bf16_autocast_and_float32():
    layer = MABN2d(8)
    x = torch.randn(2, 8, 6, 6) * 3
    expected = MABN2d(8)(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16().requires_grad_(True))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)
    assert layer.buffer_x2.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all()


def test_empty_batch():
    layer = MABN2d(4)
    x = torch.zeros(0, 4, 5, 5, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == x.shape
    assert int(layer.bn.num_batches_tracked) == 0


def test_one_value_per_channel_is_defined():
    layer = MABN2d(4, batch_size=1, real_batch_size=4)
    x = torch.randn(1, 4, 1, 1, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_batch_size_mismatch_warns_once():
    layer = MABN2d(4, batch_size=2, real_batch_size=32)
    with pytest.warns(UserWarning, match='batch_size=2 .* holds 8'):
        layer(torch.randn(8, 4, 3, 3))
    layer(torch.randn(3, 4, 3, 3))  # no second warning from this layer


# --------------------------------------------------------------------- #
# Options, registry, errors
# --------------------------------------------------------------------- #
def test_built_from_a_bn_norm_cfg_by_changing_type():
    cfg = dict(type='MABN', eps=1e-3, momentum=0.03, requires_grad=False)
    name, layer = build_norm_layer(cfg, 16)
    assert name == 'mabn' and isinstance(layer, MABN2d)
    assert layer.eps == 1e-3 and layer.momentum == 0.03
    assert layer.window == 16  # the reference's detection default: 32 / 2
    assert not any(p.requires_grad for p in layer.parameters())
    name, layer = build_norm_layer(
        dict(type='MABN2d', batch_size=8, real_batch_size=64), 4, postfix=1
    )
    assert name == 'mabn1' and layer.buffer_x2.shape == (8, 4)
    assert 'window 8' in repr(layer)
    assert sorted(layer.state_dict()) == [
        'bn.bias',
        'bn.num_batches_tracked',
        'bn.running_mean',
        'bn.running_var',
        'bn.weight',
        'buffer_gz',
        'buffer_x2',
    ]


@pytest.mark.parametrize(
    'kwargs, option',
    [
        (dict(batch_size=0), 'batch_size'),
        (dict(batch_size=3, real_batch_size=32), 'real_batch_size'),
        (dict(real_batch_size=2.5), 'real_batch_size'),
        (dict(warmup_iters=-1), 'warmup_iters'),
        (dict(renorm_warmup_iters=None), 'renorm_warmup_iters'),
        (dict(renorm_clip=0.5), 'renorm_clip'),
        (dict(eps=-1e-5), 'eps'),
        (dict(momentum=2), 'momentum'),
    ],
)
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(
        ValueError,
        match=rf'MABN\(num_features=8\): option '
        rf'`{option}`',
    ):
        build_norm_layer(dict(type='MABN', **kwargs), 8)


def test_bad_inputs_name_the_layer():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='MABN')))
    name_norm_layers(model)
    with pytest.raises(
        ValueError,
        match=r'MABN layer "0.mabn" \(MABN2d, '
        r'8 channels\): expected 8 input channels',
    ):
        model[0].mabn(torch.zeros(2, 4, 3, 3))


# --------------------------------------------------------------------- #
# In OpenMMLab models
# --------------------------------------------------------------------- #
def test_norm_eval_and_frozen_stages_in_a_backbone():
    from dn_mmdet.models.backbones import MobileNetV2DN

    backbone = MobileNetV2DN(
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=2, real_batch_size=32),
        norm_eval=True,
        frozen_stages=1,
    )
    backbone.train()
    layers = [m for m in backbone.modules() if isinstance(m, MABN2d)]
    assert len(layers) == 52
    assert all(not m.uses_batch_statistics for m in layers)
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out).backward()
    assert all(int(m.bn.num_batches_tracked) == 0 for m in layers)
    assert all(m.buffer_x2.abs().sum() == 0 for m in layers)
    assert backbone.stem.mabn.weight.grad is None
    assert backbone.conv_last.mabn.weight.grad is not None


def test_norm_decay_mult_applies_to_gamma_beta():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='MABN')))
    constructor = DefaultOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        paramwise_cfg=dict(norm_decay_mult=0.0),
    )
    groups = constructor(model).optimizer.param_groups
    decay = {id(g['params'][0]): g['weight_decay'] for g in groups}
    assert decay[id(model[0].mabn.weight)] == 0
    assert decay[id(model[0].mabn.bias)] == 0


def test_sync_bn_keeps_mabn_per_process():
    model = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='MABN')))
    reference = nn.Sequential(ConvModule(3, 8, 3, norm_cfg=dict(type='MABN')))
    reference.load_state_dict(model.state_dict())
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced[0].mabn, MABN2d)
    assert isinstance(synced[0].mabn.bn, nn.SyncBatchNorm)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(synced(x), reference(x))
    torch.testing.assert_close(
        synced[0].mabn.buffer_x2, reference[0].mabn.buffer_x2
    )


def test_efficient_conv_bn_eval_leaves_mabn_alone():
    block = ConvModule(
        3, 8, 3, norm_cfg=dict(type='MABN'), efficient_conv_bn_eval=True
    )
    assert block.efficient_conv_bn_eval_forward is None


def test_zero_init_residual_reaches_gamma():
    from mmdet.models.backbones import ResNet

    resnet = ResNet(
        depth=18, norm_cfg=dict(type='MABN'), zero_init_residual=True
    )
    resnet.init_weights()
    assert torch.equal(resnet.layer1[0].norm2.weight, torch.zeros(64))
