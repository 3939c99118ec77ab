"""dn_mmdet.datasets.shapes_generator, the embedded synthetic shapes data
set: format, content, determinism; and its command line
tools/misc/make_shapes_dataset.py."""

import hashlib
import json
import os
import os.path as osp
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO
from mmdet.registry import METRICS
from mmengine.registry import init_default_scope
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dn_mmdet.datasets import (
    SHAPES_CLASSES,
    SHAPES_METAINFO,
    ShapesDataset,
    shapes_generator,
)


def pixel_digest(img_dir):
    """Hash of the decoded pixels of every image in a folder, by name."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(img_dir)):
        digest.update(name.encode())
        digest.update(np.asarray(Image.open(osp.join(img_dir, name))).data)
    return digest.hexdigest()


def read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    summary = shapes_generator.generate_shapes_dataset(
        root, num_train=80, num_val=20, seed=0
    )
    return root, summary


def test_classes_and_metainfo():
    assert SHAPES_CLASSES == ('circle', 'square', 'triangle', 'star', 'cross')
    assert SHAPES_METAINFO['classes'] == SHAPES_CLASSES
    assert len(SHAPES_METAINFO['palette']) == len(SHAPES_CLASSES)


def test_pycocotools_loads_it_with_the_fixed_categories(shapes_root):
    root, summary = shapes_root
    for split, num in (('train', 80), ('val', 20)):
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        assert summary[split]['ann_file'] == ann_file
        coco = COCO(ann_file)
        assert len(coco.getImgIds()) == num
        cats = coco.loadCats(coco.getCatIds())
        assert [(c['id'], c['name']) for c in cats] == list(
            enumerate(SHAPES_CLASSES, start=1)
        )
        for img in coco.loadImgs(coco.getImgIds()):
            path = osp.join(root, split, img['file_name'])
            with Image.open(path) as im:
                assert im.format == 'JPEG' and im.mode == 'RGB'
                assert im.size == (img['width'], img['height'])


def test_boxes_are_tight_positive_and_inside(shapes_root):
    root, _ = shapes_root
    coco = COCO(osp.join(root, 'annotations', 'instances_train.json'))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) > 80  # 0-4 objects an image, mostly several
    assert len({a['id'] for a in anns}) == len(anns)
    deviations = []
    for ann in anns:
        img = coco.imgs[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert all(isinstance(v, float) for v in ann['bbox'])
        assert w >= 1 and h >= 1 and ann['area'] > 0 and ann['iscrowd'] == 0
        assert x >= 0 and y >= 0
        assert x + w <= img['width'] and y + h <= img['height']
        assert 1 <= ann['category_id'] <= len(SHAPES_CLASSES)
        # The polygon outlines the visible pixels through their centres, so
        # its mask has about the box and the area; a star tip or cross arm
        # occluded down to a one-pixel sliver has no area and is lost.
        mask = coco.annToMask(ann)
        mx, my, mw, mh = mask_utils.toBbox(
            mask_utils.encode(np.asfortranarray(mask))
        )
        deviations.append(
            max(
                abs(mx - x),
                abs(my - y),
                abs(mx + mw - x - w),
                abs(my + mh - y - h),
            )
        )
        assert abs(mask.sum() - ann['area']) <= 0.25 * ann['area'] + 10
    deviations = np.array(deviations)
    assert np.mean(deviations <= 3) >= 0.98 and deviations.max() <= 8


def test_content_is_varied(shapes_root):
    root, _ = shapes_root
    coco = COCO(osp.join(root, 'annotations', 'instances_train.json'))
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert 0 in per_image  # negatives
    assert max(per_image) <= 4 and len(set(per_image)) >= 4
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a['category_id'] for a in anns} == set(range(1, 6))
    sizes = [
        (i['width'], i['height']) for i in coco.loadImgs(coco.getImgIds())
    ]
    assert all(200 <= v <= 320 for s in sizes for v in s)
    assert any(w != h for w, h in sizes)
    rel = [max(a['bbox'][2:]) / min(sizes[a['image_id'] - 1]) for a in anns]
    assert min(rel) < 0.2 and max(rel) > 0.5


def test_mmdet_coco_metric_scores_the_ground_truth_as_perfect(shapes_root):
    """The files carry what CocoDataset and CocoMetric need: the val set's
    own boxes, fed through the real dataset as predictions, score mAP 1."""
    root, _ = shapes_root
    init_default_scope('mmdet')
    ann_file = osp.join(root, 'annotations', 'instances_val.json')
    dataset = ShapesDataset(
        data_root=root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=[],
    )
    metric = METRICS.build(dict(type='CocoMetric', ann_file=ann_file))
    metric.dataset_meta = dataset.metainfo
    samples = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        boxes = [inst['bbox'] for inst in info['instances']]
        samples.append(
            dict(
                img_id=info['img_id'],
                ori_shape=(info['height'], info['width']),
                pred_instances=dict(
                    bboxes=torch.tensor(boxes).reshape(-1, 4),
                    scores=torch.ones(len(boxes)),
                    labels=torch.tensor(
                        [inst['bbox_label'] for inst in info['instances']],
                        dtype=torch.long,
                    ),
                ),
            )
        )
    metric.process({}, samples)
    results = metric.evaluate(len(samples))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)


def test_same_seed_is_identical_other_seed_differs(tmp_path):
    outs = {}
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        root = str(tmp_path / name)
        shapes_generator.generate_shapes_dataset(
            root, num_train=6, num_val=2, seed=seed
        )
        outs[name] = (
            read_bytes(osp.join(root, 'annotations', 'instances_train.json')),
            read_bytes(osp.join(root, 'annotations', 'instances_val.json')),
            pixel_digest(osp.join(root, 'train')),
            pixel_digest(osp.join(root, 'val')),
        )
    assert outs['a'] == outs['b']
    for i in range(4):
        assert outs['a'][i] != outs['c'][i]


def test_output_does_not_depend_on_workers(tmp_path):
    digests = []
    for workers in (0, 2):
        root = str(tmp_path / f'w{workers}')
        shapes_generator.generate_shapes_dataset(
            root, num_train=8, num_val=0, seed=1, workers=workers
        )
        digests.append(
            (
                read_bytes(
                    osp.join(root, 'annotations', 'instances_train.json')
                ),
                pixel_digest(osp.join(root, 'train')),
            )
        )
    assert digests[0] == digests[1]


def test_coco_layout(tmp_path):
    root = str(tmp_path)
    shapes_generator.generate_shapes_dataset(
        root, num_train=3, num_val=2, seed=0, coco_layout=True
    )
    assert sorted(os.listdir(osp.join(root, 'annotations'))) == [
        'instances_train2017.json',
        'instances_val2017.json',
    ]
    assert sorted(os.listdir(osp.join(root, 'train2017'))) == [
        '000001.jpg',
        '000002.jpg',
        '000003.jpg',
    ]
    assert len(os.listdir(osp.join(root, 'val2017'))) == 2
    assert not osp.exists(osp.join(root, 'train'))


def test_ensure_is_idempotent_and_removes_stale_images(tmp_path):
    root = str(tmp_path)
    ensure = shapes_generator.ensure_shapes_dataset
    assert ensure(root, num_train=5, num_val=2)
    ann_file = osp.join(root, 'annotations', 'instances_train.json')
    before = os.stat(ann_file).st_mtime_ns
    assert not ensure(root, num_train=5, num_val=2)
    assert os.stat(ann_file).st_mtime_ns == before
    with open(osp.join(root, 'shapes_stamp.json')) as f:
        assert json.load(f)['num_train'] == 5

    # Other parameters regenerate, and leave no image of the old set behind
    # (a user's files stay).
    for name in ('mine.jpg', '0000001.jpg'):
        open(osp.join(root, 'train', name), 'w').close()
    assert ensure(root, num_train=3, num_val=2)
    assert sorted(os.listdir(osp.join(root, 'train'))) == [
        '0000001.jpg',
        '000001.jpg',
        '000002.jpg',
        '000003.jpg',
        'mine.jpg',
    ]
    for name in ('mine.jpg', '0000001.jpg'):
        os.remove(osp.join(root, 'train', name))
    assert ensure(root, num_train=3, num_val=2, force=True)

    # An interrupted run (no stamp, or a missing image) is redone.
    os.remove(osp.join(root, 'train', '000003.jpg'))
    assert ensure(root, num_train=3, num_val=2)
    assert osp.isfile(osp.join(root, 'train', '000003.jpg'))


def test_ensure_does_not_overwrite_foreign_annotations(tmp_path):
    ensure = shapes_generator.ensure_shapes_dataset
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    real = root / 'annotations' / 'instances_val2017.json'
    real.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(FileExistsError, match='instances_val2017.json'):
        ensure(str(root), 2, 2, coco_layout=True)
    assert real.read_text().startswith('{"images"')
    assert not (root / 'train2017').exists()
    assert ensure(str(root), 2, 2, coco_layout=True, force=True)
    assert ensure(str(root), 3, 2, coco_layout=True)


@pytest.mark.slow
def test_cli(tmp_path, tool_env, capsys):
    """The command line, once in a real process: writes, is idempotent,
    takes the COCO layout; bad arguments are usage errors."""
    out = str(tmp_path / 'shapes')
    script = osp.join(REPO, 'tools', 'misc', 'make_shapes_dataset.py')
    argv = [
        '--out',
        out,
        '--num-train',
        '4',
        '--num-val',
        '2',
        '--seed',
        '7',
        '--workers',
        '1',
    ]
    proc = subprocess.run(
        [sys.executable, script] + argv,
        capture_output=True,
        text=True,
        env=tool_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'wrote 4 train and 2 val images' in proc.stdout
    assert len(os.listdir(osp.join(out, 'train'))) == 4
    with open(osp.join(out, 'annotations', 'instances_val.json')) as f:
        assert json.load(f)['info']['seed'] == 7
    cli = runpy.run_path(script)  # its functions, without running it
    cli['main'](argv)
    assert 'up to date' in capsys.readouterr().out
    cli['main'](argv + ['--coco-layout'])
    assert osp.isfile(osp.join(out, 'annotations', 'instances_val2017.json'))
    # were numpy's and the generator's tracebacks
    for bad, message in (
        (
            ['--seed', '-1'],
            "argument --seed: expected a whole number >= 0, got '-1'",
        ),
        (
            ['--img-size', '64', '16'],
            '--img-size must be MIN MAX with 32 <= MIN <= MAX, got 64 16',
        ),
    ):
        with pytest.raises(SystemExit) as exit:
            cli['parse_args'](bad)
        assert exit.value.code == 2
        assert message in capsys.readouterr().err
