"""DN Figure 5 (dn_mmdet.analysis.dn_affine, and its command line
tools/analysis/plot_dn_affine.py in a real process) on a DN-B checkpoint
that a real short training run wrote."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from mmengine.config import Config, DictAction

from dn_mmdet.analysis import dn_affine

TOOL = REPO / 'tools/analysis/plot_dn_affine.py'
CONFIGS = REPO / 'configs/ssdlite'
CONFIG = CONFIGS / 'ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
DN_CONFIG = CONFIGS / 'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py'


@pytest.fixture(scope='module', autouse=True)
def plain_dn():
    """In this process: DN in plain torch ops (``DN_MMDET_FUSED=0``). The
    recorded layers run in torch anyway (their SC-Module has a hook), the
    others then need no compiled CPU kernel (whose build this process would
    wait for)."""
    patch = pytest.MonkeyPatch()
    patch.setenv('DN_MMDET_FUSED', '0')
    yield
    patch.undo()


@pytest.fixture(scope='module')
def dn_run(shapes_options, shapes_data, tmp_path_factory):
    """A short real training run of the DN-B shapes detector (mmengine's
    Runner in this process: two iterations, a checkpoint on disk)."""
    from mmengine.runner import Runner

    from dn_mmdet.utils.launch import load_config

    work_dir = tmp_path_factory.mktemp('dn_affine') / 'run'
    options = shapes_options(shapes_data, max_epochs=1, seed=0)
    cfg = load_config(
        str(DN_CONFIG),
        {
            **_parse(options),
            'train_dataloader.dataset.indices': 4,
            'train_cfg.val_begin': 2,  # no validation: not needed here
        },
    )
    cfg.work_dir = str(work_dir)
    Runner.from_cfg(cfg).train()
    return dict(
        config=str(DN_CONFIG),
        checkpoint=str(work_dir / 'epoch_1.pth'),
        options=shapes_options(shapes_data, seed=0),
    )


def _parse(options):
    """``--cfg-options`` items as the dict tools/train.py merges."""
    return {
        key: DictAction._parse_iterable(value)
        for key, value in (item.split('=', 1) for item in options)
    }


@pytest.fixture(scope='module')
def model_and_dataset(dn_run):
    """The trained model (eval) and the val dataset, as the tool builds
    them."""
    return dn_affine.build_model_and_dataset(
        dn_run['config'],
        dn_run['checkpoint'],
        'val',
        _parse(dn_run['options']),
    )


@pytest.mark.slow
def test_records_first_and_last_dn_per_class(
    dn_run, model_and_dataset, tmp_path, tool_env
):
    out, dump = tmp_path / 'fig5.png', tmp_path / 'fig5.json'
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            dn_run['config'],
            dn_run['checkpoint'],
            '--out',
            str(out),
            '--dump',
            str(dump),
            '--batch-size',
            '3',
            '--cfg-options',
            *dn_run['options'],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(tool_env, DN_MMDET_FUSED='0'),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(dump.read_text())
    model, dataset = model_and_dataset
    from dn_mmdet.norm import DynamicNorm2d

    dn_names = [
        n for n, m in model.named_modules() if isinstance(m, DynamicNorm2d)
    ]
    first, last = dn_names[0], dn_names[-1]
    assert list(stats['layers']) == [first, last]
    assert first.startswith('backbone.') and last.startswith('backbone.')
    assert stats['layers'][last]['channels'] == 1280  # DN-end, as the paper

    # Independently: the layer's input through its own SC-Module, per image
    # of the class, averaged (a pre-hook on the DN layer, not on the SC).
    classes = dn_affine.images_by_class(dataset)
    assert list(stats['images']) == list(classes)
    cls, indices = next(iter(classes.items()))
    layer = dict(model.named_modules())[first]
    pooled = []
    handle = layer.register_forward_pre_hook(
        lambda m, args: pooled.append(args[0].mean(dim=(2, 3)))
    )
    from mmengine.dataset import pseudo_collate

    with torch.no_grad():
        for i in indices:
            data = model.data_preprocessor(pseudo_collate([dataset[i]]), False)
            model(**data, mode='tensor')
        handle.remove()
        alpha_delta, lambda_delta = layer.sc(torch.cat(pooled))
    expected_alpha = (alpha_delta + layer.base_scale).mean(0)
    expected_lambda = (lambda_delta + layer.base_shift).mean(0)
    entry = stats['layers'][first]['classes'][cls]
    assert entry['images'] == len(indices)
    assert torch.tensor(entry['alpha_mean']) == pytest.approx(
        expected_alpha, abs=1e-5
    )
    assert torch.tensor(entry['lambda_mean']) == pytest.approx(
        expected_lambda, abs=1e-5
    )
    # The short run moved the generated affine away from BN's (1, 0).
    assert (expected_alpha - 1).abs().max() > 0
    import matplotlib.image as mpimg

    image = mpimg.imread(out)
    assert image.shape[0] > 200 and image.std() > 0
    printed = proc.stdout
    assert f'{first} (' in printed and 'between-class std' in printed


@pytest.mark.slow
def test_images_go_to_their_dominant_class(model_and_dataset):
    _, dataset = model_and_dataset
    classes = list(dataset.metainfo['classes'])
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        area = {}
        for inst in info['instances']:
            x1, y1, x2, y2 = inst['bbox']
            area[inst['bbox_label']] = area.get(inst['bbox_label'], 0) + (
                x2 - x1
            ) * (y2 - y1)
        label = dn_affine.image_class(info, 'shapes', index)
        assert label == (max(area, key=area.get) if area else -1)
    assigned = dn_affine.images_by_class(dataset, max_images=1)
    assert all(len(v) == 1 for v in assigned.values())
    assert all(c in classes for c in assigned)


@pytest.mark.slow
def test_bad_layer_and_class_are_named(model_and_dataset):
    model, dataset = model_and_dataset
    with pytest.raises(ValueError, match="'neck.nope' is not a DN-B layer"):
        dn_affine.select_layers(model, ['first', 'neck.nope'])
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        dn_affine.images_by_class(dataset, ['dog'])


def test_model_without_dn_is_refused():
    config = Config.fromfile(str(CONFIG))
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope('mmdet')
    model = MODELS.build(config.model)
    with pytest.raises(ValueError, match='has no DN-B layer'):
        dn_affine.select_layers(model, ['first'])


def test_summary_and_plot_of_given_affines(tmp_path):
    """Class means per channel, the spread across and within classes, and
    the figure, on given figures (no model)."""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # 2 images, 2 channels
    b = torch.tensor([[5.0, 6.0]])
    summary = dn_affine.summarise(
        {'cat': {'l': (a, a * 0)}, 'dog': {'l': (b, b * 0)}}
    )
    entry = summary['l']
    assert entry['channels'] == 2
    assert entry['classes']['cat']['alpha_mean'] == [2.0, 3.0]
    assert entry['classes']['dog']['images'] == 1
    assert entry['alpha_between_class_std'] == pytest.approx(
        torch.tensor([2.0, 5.0]).std().item()
    )
    assert entry['lambda_between_class_std'] == 0.0
    assert dn_affine.summary_line('l', entry).startswith(
        'l (2 channels): alpha mean 4.000, between-class std 2.1213'
    )
    out = tmp_path / 'fig.png'
    dn_affine.plot_affines(summary, str(out), max_channels=1, title='t')
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_rejects_bad_counts(capsys):
    import runpy

    cli = runpy.run_path(str(TOOL))
    with pytest.raises(SystemExit) as exit:
        cli['parse_args'](
            ['c.py', 'x.pth', '--out', 'o.png', '--batch-size', '0']
        )
    assert exit.value.code == 2
    assert (
        "argument --batch-size: expected a whole number >= 1, got '0'"
        in capsys.readouterr().err
    )
