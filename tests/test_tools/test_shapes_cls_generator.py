"""tools/misc/make_shapes_cls_dataset.py: the embedded classification data
(real JPEG crops in mmpretrain CustomDataset format), deterministic."""
import hashlib
import os
import os.path as osp
import sys

import numpy as np
import pytest
from mmpretrain.datasets import CustomDataset
from PIL import Image

from dn_mmdet.datasets import SHAPES_CLASSES


@pytest.fixture(scope='module')
def tool(load_tool):
    module = load_tool('misc/make_shapes_cls_dataset')
    # Registered, so that its functions pickle into the worker processes.
    sys.modules.setdefault(module.__name__, module)
    return module


def digest(root):
    """Hash of the annotation files and the decoded pixels of every crop."""
    h = hashlib.sha256()
    for split in ('train', 'val'):
        with open(osp.join(root, 'meta', f'{split}.txt'), 'rb') as f:
            h.update(f.read())
        for name in sorted(os.listdir(osp.join(root, split))):
            h.update(np.asarray(Image.open(osp.join(root, split, name))).data)
    return h.hexdigest()


@pytest.fixture(scope='module')
def generated(tool, tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes_cls'))
    summary = tool.generate_shapes_cls_dataset(
        root, num_train=30, num_val=10, seed=0, size=32)
    return root, summary


def test_files_and_mmpretrain_reads_them(generated):
    root, summary = generated
    assert open(osp.join(root, 'meta', 'classes.txt')).read().split() == \
        list(SHAPES_CLASSES)
    for split, num in (('train', 30), ('val', 10)):
        assert summary[split]['num_images'] == num
        assert sum(summary[split]['class_counts']) == num
        dataset = CustomDataset(
            data_root=root, ann_file=f'meta/{split}.txt', data_prefix='',
            classes=osp.join(root, 'meta', 'classes.txt'))
        assert len(dataset) == num
        labels = [dataset.get_data_info(i)['gt_label'] for i in range(num)]
        assert set(labels) <= set(range(len(SHAPES_CLASSES)))
        for i in range(num):
            with Image.open(dataset.get_data_info(i)['img_path']) as img:
                assert img.format == 'JPEG' and img.size == (32, 32)
    # several classes in a small sample, roughly balanced in a larger one
    assert len({c for c in summary['train']['class_counts'] if c}) >= 4


def test_deterministic_whatever_the_workers(tool, generated, tmp_path):
    root, _ = generated
    again = str(tmp_path / 'again')
    tool.generate_shapes_cls_dataset(
        again, num_train=30, num_val=10, seed=0, size=32, workers=2)
    assert digest(again) == digest(root)
    other = str(tmp_path / 'other')
    tool.generate_shapes_cls_dataset(
        other, num_train=30, num_val=10, seed=1, size=32)
    assert digest(other) != digest(root)


def test_crops_are_centred_on_their_shape(tool):
    """A crop is a square around the object's box, shifted into the image
    where the square would cross the border."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 170:200] = 255  # the object: a 30 x 20 box at the right edge
    rng = np.random.default_rng(0)
    [(crop, label)] = tool.crop_objects(
        img, [dict(bbox=[170, 40, 30, 20], category_id=3)], rng, size=24)
    assert label == 2 and crop.shape == (24, 24, 3)
    bright = crop.mean(axis=2) > 127
    rows = np.flatnonzero(bright.any(axis=1))
    cols = np.flatnonzero(bright.any(axis=0))
    # vertically centred; 1.2-1.6 x 30 px wide, so the object covers 62-83%
    # of the crop, which ends at the image border
    assert abs((rows[0] + rows[-1]) / 2 - 11.5) <= 1
    assert cols[-1] == 23 and 0.55 <= (cols[-1] - cols[0] + 1) / 24 <= 0.9


def test_ensure_is_idempotent_and_cli(tool, tmp_path, capsys):
    out = str(tmp_path / 'cls')
    argv = ['--out', out, '--num-train', '12', '--num-val', '4', '--size',
            '16', '--workers', '0']
    tool.main(argv)
    assert 'wrote 12 train and 4 val images (16x16)' in capsys.readouterr().out
    stamp = osp.getmtime(osp.join(out, tool.STAMP_NAME))
    tool.main(argv)
    assert 'is up to date' in capsys.readouterr().out
    assert osp.getmtime(osp.join(out, tool.STAMP_NAME)) == stamp
    # other parameters: regenerated, no stale crops left
    tool.main(['--out', out, '--num-train', '8', '--num-val', '4', '--size',
               '16', '--workers', '0'])
    assert len(os.listdir(osp.join(out, 'train'))) == 8
    with pytest.raises(SystemExit):
        tool.parse_args(['--size', '8'])
