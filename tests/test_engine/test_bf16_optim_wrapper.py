import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

import dn_mmdet  # noqa: F401
from dn_mmdet.norm import DynamicNorm2d


def test_bf16_optim_wrapper_autocasts_and_steps_in_fp32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), DynamicNorm2d(8, g='oup'))
    wrapper = build_optim_wrapper(
        model,
        dict(type='BF16OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
    )
    before = model[0].weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(4, 3, 16, 16))
        loss = out.float().pow(2).mean()
    assert out.dtype == torch.bfloat16
    wrapper.update_params(loss)
    assert model[0].weight.dtype == torch.float32
    assert not torch.equal(model[0].weight, before)
    assert torch.isfinite(model[0].weight).all()
    # outside its context nothing is autocast
    assert model(torch.randn(2, 3, 16, 16)).dtype == torch.float32
