"""PlainParamGroupsOptimWrapperConstructor: the default constructor's groups,
as plain dicts, and an optimizer step that torch.compile can trace."""

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.optim import build_optim_wrapper

OPTIM = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-3, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _step(model, wrapper, compiled=False):
    def step():
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
        model(x).sum().backward()
        wrapper.step()
        wrapper.zero_grad()

    (torch.compile(step, backend='eager') if compiled else step)()


def test_groups_are_the_defaults_as_plain_dicts():
    default = build_optim_wrapper(_model(), ConfigDict(OPTIM))
    plain = build_optim_wrapper(
        _model(),
        ConfigDict(
            OPTIM, constructor='PlainParamGroupsOptimWrapperConstructor'
        ),
    )
    # mmengine's own groups are ConfigDicts: what dynamo cannot trace.
    assert type(default.optimizer.param_groups[0]) is ConfigDict
    groups = plain.optimizer.param_groups
    assert all(type(group) is dict for group in groups)

    def options(group):
        return {k: v for k, v in group.items() if k != 'params'}

    assert [options(g) for g in default.optimizer.param_groups] == [
        options(g) for g in groups
    ]
    assert len(groups) == len(default.optimizer.param_groups) > 1


def test_a_compiled_step_equals_the_eager_one():
    eager_model, compiled_model = _model(), _model()
    cfg = ConfigDict(
        OPTIM, constructor='PlainParamGroupsOptimWrapperConstructor'
    )
    eager = build_optim_wrapper(eager_model, cfg)
    compiled = build_optim_wrapper(compiled_model, cfg)
    _step(eager_model, eager)
    _step(compiled_model, compiled, compiled=True)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p, q)
