"""dn_mmdet.norm.base.replace_modules, the model surgery shared by
convert_batchnorm (BN -> DN), MABN2d.convert_to_batchnorm and
CenConv2d.convert_to_conv2d (each tested with its layer)."""

import torch.nn as nn

from dn_mmdet.norm.base import replace_modules


def test_replaces_in_place_under_the_same_names():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1),
        nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)),
    )
    seen = []

    def replace(module):
        seen.append(type(module).__name__)
        return nn.Identity() if isinstance(module, nn.Conv2d) else None

    assert replace_modules(model, replace) is model
    assert [type(m).__name__ for m in model.modules()] == [
        'Sequential',
        'Identity',
        'Sequential',
        'ReLU',
        'Identity',
    ]
    assert seen == ['Sequential', 'Conv2d', 'Sequential', 'ReLU', 'Conv2d']


def test_a_replaced_or_kept_module_is_not_searched():
    inner = nn.Sequential(nn.ReLU())
    model = nn.Sequential(inner)
    seen = []

    def keep_inner(module):
        seen.append(module)
        return module if module is inner else None

    assert replace_modules(model, keep_inner) is model
    assert model[0] is inner and seen == [model, inner]


def test_the_root_itself_can_be_replaced():
    relu = nn.ReLU()
    new = replace_modules(relu, lambda m: nn.Identity())
    assert isinstance(new, nn.Identity)
