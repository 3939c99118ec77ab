"""End to end: the paper's COCO configs train, validate and plot on the CPU.

A few images of the embedded shapes data in COCO layout stand in for COCO;
the configs run unchanged except for paths, batch size and length, through
mmengine's Runner, the whole FNA pipeline and pycocotools' COCO evaluation.
"""

import glob
import json
import math
import os.path as osp

import pytest
from helpers import REPO
from mmengine.config import Config
from mmengine.runner import Runner

from dn_mmdet.datasets import SHAPES_CLASSES

CONFIGS = {
    'bn': 'configs/ssdlite/ssdlite_mobilenetv2-bn_2xb64-30e_coco.py',
    'dn': 'configs/ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py',
}


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory, shapes_generator):
    root = str(tmp_path_factory.mktemp('coco'))
    # One batch (of 2) an epoch and one a validation: the configs' whole
    # pipeline, at their input size (320), for the least time.
    shapes_generator.generate_shapes_dataset(
        root, num_train=2, num_val=2, coco_layout=True
    )
    return root + '/'


def _small_run_cfg(config, data_root, work_dir):
    """The config with paths, classes, batch and length made small."""
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.work_dir = work_dir
    # The shapes categories instead of COCO's 80.
    metainfo = dict(classes=SHAPES_CLASSES)
    cfg.model.bbox_head.num_classes = len(SHAPES_CLASSES)
    loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.update(loader)
    cfg.train_dataloader.dataset.times = 1
    cfg.train_dataloader.dataset.dataset.update(
        data_root=data_root, metainfo=metainfo
    )
    cfg.val_dataloader.update(loader)
    cfg.val_dataloader.dataset.update(data_root=data_root, metainfo=metainfo)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator.ann_file = osp.join(
        data_root, 'annotations/instances_val2017.json'
    )
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg.max_epochs = 2
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    # Two runners in one process: give each its own logger and visualizer
    # (mmengine keeps them as named global instances), or the second run's
    # scalars land in the first run's log.
    cfg.experiment_name = osp.basename(work_dir)
    cfg.visualizer.name = osp.basename(work_dir)
    return cfg


def _records(work_dir):
    """The run's scalars.json path and its records."""
    (path,) = glob.glob(osp.join(work_dir, '*/vis_data/scalars.json'))
    with open(path) as f:
        return path, [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='module')
def trained(coco_root, tmp_path_factory):
    """Train both detectors for 2 short epochs; return their work dirs."""
    dirs = {}
    for name, config in CONFIGS.items():
        work_dir = str(tmp_path_factory.mktemp(f'work_{name}'))
        runner = Runner.from_cfg(_small_run_cfg(config, coco_root, work_dir))
        runner.train()
        metrics = runner.test()
        assert 'coco/bbox_mAP' in metrics
        assert 0 <= metrics['coco/bbox_mAP'] <= 1
        dirs[name] = work_dir
    return dirs


@pytest.mark.parametrize('name', list(CONFIGS))
@pytest.mark.slow
def test_coco_config_trains_and_evaluates(trained, name):
    _, records = _records(trained[name])
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'coco/bbox_mAP' in r]
    assert len(train) >= 2
    assert all(math.isfinite(r['loss']) for r in train)
    assert [r['step'] for r in val] == [1, 2]  # validated every epoch
    assert osp.isfile(osp.join(trained[name], 'epoch_2.pth'))


@pytest.mark.slow
def test_plot_map_from_real_runs(trained, tmp_path, load_tool):
    plot_map = load_tool('analysis/plot_map')

    scalars, records = _records(trained['dn'])
    expected = {
        r['step']: r['coco/bbox_mAP'] for r in records if 'coco/bbox_mAP' in r
    }
    # A work dir and a scalars.json file give the same curve.
    assert plot_map.read_metric(trained['dn']) == expected
    assert plot_map.read_metric(scalars) == expected

    out = str(tmp_path / 'map.png')
    plot_map.main(
        [trained['bn'], scalars, '--labels', 'BN', 'DN-B', '--out', out]
    )
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0  # not a blank image

    with pytest.raises(ValueError, match='no "coco/segm_mAP"'):
        plot_map.read_metric(trained['bn'], 'coco/segm_mAP')
    with pytest.raises(FileNotFoundError, match='no .*scalars.json'):
        plot_map.read_metric(str(tmp_path))
    with pytest.raises(SystemExit):
        plot_map.main([trained['bn'], '--labels', 'a', 'b', '--out', out])
