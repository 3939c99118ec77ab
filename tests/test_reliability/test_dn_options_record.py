"""A DN checkpoint records the options that change the layer's function
(mode, r, g, eps, activation); a model with other options refuses it as it
refuses another model's, and a checkpoint without the record loads as
before."""

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.runner.checkpoint import (
    get_state_dict,
    load_checkpoint,
    save_checkpoint,
    weights_to_cpu,
)

from dn_mmdet.engine.hooks import CheckpointMatchHook
from dn_mmdet.utils import load_from_local
from dn_mmdet.utils.checkpoint import (
    OPTIONS_KEY,
    CheckpointMismatchError,
    format_mismatch,
    state_dict_mismatch,
)


class Net(nn.Module):
    def __init__(self, **dn_options):
        super().__init__()
        self.conv = ConvModule(
            3, 16, 3, padding=1, norm_cfg=dict(type='DN', **dn_options)
        )

    def forward(self, x):
        return self.conv(x)


def saved(tmp_path, model) -> str:
    """``model`` saved as mmengine's runner saves it."""
    path = str(tmp_path / 'dn.pth')
    save_checkpoint(
        dict(
            state_dict=weights_to_cpu(get_state_dict(model)),
            meta=dict(epoch=1),
        ),
        path,
    )
    return path


def test_options_are_recorded_and_survive_mmengine_save(tmp_path):
    model = Net(r=4, g='oup', mode='B', eps=1e-5)
    assert model.state_dict()._metadata['conv.dn'][OPTIONS_KEY] == dict(
        mode='B', r=4, g='oup', eps=1e-5, act='Sigmoid()'
    )
    state = load_from_local(saved(tmp_path, model))['state_dict']
    assert state._metadata['conv.dn'][OPTIONS_KEY]['mode'] == 'B'
    # Keys are unchanged: no entry added to the state dict itself.
    assert list(state) == list(model.state_dict())


@pytest.mark.parametrize(
    'other,shown',
    [
        (dict(mode='C1'), "mode='B' (model: 'C1')"),
        (dict(eps=1e-3), 'eps=1e-05 (model: 0.001)'),
        (dict(act_cfg=dict(type='ReLU')), "act='Sigmoid()' (model: 'ReLU()')"),
    ],
)
def test_other_options_are_refused_naming_layer_and_option(
    tmp_path, other, shown
):
    """Before: same keys and shapes, so the checkpoint loaded silently."""
    path = saved(tmp_path, Net(r=4, g='oup'))
    model = Net(**dict(dict(r=4, g='oup'), **other))
    for load in (
        lambda: load_checkpoint(model, path, strict=False),
        lambda: model.load_state_dict(load_from_local(path)['state_dict']),
    ):
        with pytest.raises(CheckpointMismatchError) as err:
            load()
        assert str(err.value).startswith(
            f'Checkpoint layer "conv.dn" was saved with {shown}; it does '
            'not fit DN layer'
        )
        assert 'Load it into a model built with the recorded options' in str(
            err.value
        )
    # The comparison CheckpointMatchHook makes before loading anything.
    mismatch = state_dict_mismatch(
        model.state_dict(), load_from_local(path)['state_dict']
    )
    assert mismatch and not (mismatch.missing or mismatch.unexpected)
    assert (
        f'recorded otherwise in the checkpoint: conv.dn {shown}'
        in format_mismatch(mismatch)
    )


def test_runner_refuses_another_variants_checkpoint_before_loading(
    tmp_path, toy
):
    """load_from of a DN-B run's checkpoint into the DN-C1 model: refused
    by CheckpointMatchHook, nothing loaded."""
    toy.build_runner(
        tmp_path / 'dnb', model=toy.ToyNet(dict(type='DN', r=4)), max_epochs=1
    ).train()
    model = toy.ToyNet(dict(type='DN', r=4, mode='C1'))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = toy.build_runner(
        tmp_path / 'dnc1',
        model=model,
        max_epochs=1,
        load_from=str(tmp_path / 'dnb' / 'epoch_1.pth'),
        custom_hooks=[CheckpointMatchHook()],
    )
    with pytest.raises(CheckpointMismatchError) as err:
        runner.train()
    assert 'does not fit the model of this config; nothing was loaded' in str(
        err.value
    )
    assert "backbone.0.dn mode='B' (model: 'C1')" in str(err.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_same_options_load_strictly_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    source = Net(r=4, g='oup').eval()
    with torch.no_grad():
        source.conv.dn.sc.fc2.weight.normal_()
    model = Net(r=4, g='oup').eval()
    load_checkpoint(model, saved(tmp_path, source), strict=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), source(x))


def test_checkpoint_without_the_record_loads_as_before(tmp_path):
    """Checkpoints written before the record (no metadata, or metadata
    without it) load into a model of any options, as they did."""
    state = Net(r=4, g='oup').state_dict()
    model = Net(r=4, g='oup', mode='C1')
    model.load_state_dict(OrderedDict(state), strict=True)  # no _metadata
    state._metadata = OrderedDict(
        (k, dict(version=v['version'])) for k, v in state._metadata.items()
    )
    model.load_state_dict(state, strict=True)
