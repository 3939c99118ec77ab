"""Bad data fails when the dataset is built, naming the file and problem;
data that is unusual but valid goes through the real mmdet pipeline."""
import json
import logging
import os
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmdet.registry import DATASETS
from mmengine.dataset import Compose
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from PIL import Image

from dn_mmdet.datasets import (SHAPES_CLASSES, CheckedCocoDataset,
                               DatasetCheckError, ShapesDataset,
                               check_image_file)

CLASSES = ('a', 'b')
CATEGORIES = [dict(id=1, name='a'), dict(id=2, name='b')]
MEAN = (123.675, 116.28, 103.53)


@pytest.fixture(autouse=True)
def mmdet_scope():
    # Pipelines name mmdet's transforms, as in a config.
    init_default_scope('mmdet')


@pytest.fixture
def log_records():
    """Records logged through mmengine's current logger."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def write_image(path,
                size=(40, 30),
                mode='RGB',
                colour=(200, 30, 60),
                fmt=None):
    os.makedirs(osp.dirname(path), exist_ok=True)
    if mode == 'RGB':
        img = Image.new('RGB', size, colour)
    elif mode == 'RGBA':
        img = Image.new('RGBA', size, colour + (128, ))
    elif mode == 'P':
        img = Image.new('RGB', size, colour).convert(
            'P', palette=Image.Palette.ADAPTIVE)
    elif mode == 'I;16':
        img = Image.fromarray(np.full(size[::-1], 100 * 257, np.uint16))
    else:
        img = Image.new(mode, size, colour[0])
    img.save(path, format=fmt)


def ann(id, image_id, bbox, category_id=1, **kw):
    x = dict(
        id=id,
        image_id=image_id,
        category_id=category_id,
        bbox=bbox,
        area=100.0,
        iscrowd=0)
    x.update(kw)
    return x


def make_coco(root, images=None, annotations=None, categories=CATEGORIES):
    """A small COCO data set in ``root``: ann.json and images in img/.

    ``images`` is a list of ``(file_name, (w, h), mode)``; the default is
    three 40x30 RGB JPEGs, the second of them without annotations.
    """
    root = str(root)
    if images is None:
        images = [(f'{i}.jpg', (40, 30), 'RGB') for i in (1, 2, 3)]
    if annotations is None:
        annotations = [
            ann(1, 1, [2, 3, 10, 8]),
            ann(2, 1, [20, 10, 15, 12], 2),
            ann(3, 3, [5, 5, 20, 20], 2)
        ]
    entries = []
    for i, (name, size, mode) in enumerate(images, start=1):
        write_image(osp.join(root, 'img', name), size, mode)
        entries.append(
            dict(id=i, file_name=name, width=size[0], height=size[1]))
    coco = dict(images=entries, annotations=annotations, categories=categories)
    with open(osp.join(root, 'ann.json'), 'w') as f:
        json.dump(coco, f)
    return root


def build(root, pipeline=(), **kwargs):
    cfg = dict(
        type='CheckedCocoDataset',
        data_root=str(root),
        ann_file='ann.json',
        data_prefix=dict(img='img/'),
        metainfo=dict(classes=CLASSES),
        pipeline=list(pipeline))
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def test_registered():
    assert DATASETS.get('CheckedCocoDataset') is CheckedCocoDataset
    assert DATASETS.get('ShapesDataset') is ShapesDataset


# --------------------------------------------------------------------------
# Annotation file
# --------------------------------------------------------------------------
def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build(tmp_path)
    assert f"'{tmp_path / 'ann.json'}' does not exist" in str(e.value)


@pytest.mark.parametrize('content, problem',
                         [(b'', 'is empty'),
                          (b'\xff\xd8\xff\xe0 binary', 'not UTF-8'),
                          (b'images: []', 'not valid json'),
                          (b'[1, 2]', 'holds a json list')])
def test_annotation_file_that_is_not_coco_json(tmp_path, content, problem):
    (tmp_path / 'ann.json').write_bytes(content)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    assert str(tmp_path / 'ann.json') in str(e.value)
    assert problem in str(e.value)


def test_truncated_annotation_file(tmp_path):
    make_coco(tmp_path)
    path = tmp_path / 'ann.json'
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and 'not valid json' in msg
    assert 'looks truncated' in msg


def test_annotation_file_with_bad_entries(tmp_path):
    annotations = [
        ann(1, 1, [2, 3, 10, 8]),
        ann(1, 3, [5, 5, 20, 20]),  # duplicate id
        ann(3, 9, [2, 3, 10, 8]),  # no such image
        ann(4, 1, [2, 3, 10, 8], category_id=7),  # no such category
        ann(5, 1, [2, 3, 10]),  # three numbers
        ann(6, 1, [2, 3, 'x', 8]),
    ]
    del annotations[0]['area']
    del annotations[1]['iscrowd']
    make_coco(tmp_path, annotations=annotations)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    msg = str(e.value)
    assert f"'{tmp_path / 'ann.json'}' is not a valid COCO" in msg
    for part in ("annotations[0] (id 1): 'area' must be a finite number",
                 "annotations[1] (id 1): 'iscrowd' must be 0 or 1",
                 "annotations[2] (id 3): 'image_id' 9 is not the id",
                 "annotations[3] (id 4): 'category_id' 7 is not the id",
                 "annotations[4] (id 5): 'bbox' must be [x, y, w, h]",
                 "annotations[5] (id 6): 'bbox' must be",
                 'annotation id 1 is used more than once'):
        assert part in msg


def test_annotation_file_without_sections(tmp_path):
    (tmp_path / 'ann.json').write_text(json.dumps(dict(images={})))
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    assert "'images' is a dict, not a list" in str(e.value)
    assert "'categories' is missing" in str(e.value)


def test_classes_missing_from_categories(tmp_path):
    make_coco(tmp_path)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path, metainfo=dict(classes=('a', 'zebra')))
    msg = str(e.value)
    assert "classes ['zebra'] are not categories" in msg
    assert str(tmp_path / 'ann.json') in msg


# --------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------
def test_missing_image_file(tmp_path):
    make_coco(tmp_path)
    os.remove(tmp_path / 'img' / '3.jpg')
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    msg = str(e.value)
    assert '1 of the 3 images' in msg
    assert f"'{tmp_path / 'img' / '3.jpg'}': file not found" in msg
    assert '1.jpg' not in msg
    # The check can be turned off; then mmcv fails when it loads the image.
    dataset = build(tmp_path, check_images='none')
    assert len(dataset) == 3


def test_wrong_image_folder(tmp_path):
    make_coco(tmp_path)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path, data_prefix=dict(img='images/'))
    assert '3 of the 3 images' in str(e.value)
    assert "check data_root and data_prefix['img']" in str(e.value)


def test_corrupt_image_file(tmp_path):
    make_coco(tmp_path)
    (tmp_path / 'img' / '2.jpg').write_bytes(b'this is no image' * 10)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    assert f"'{tmp_path / 'img' / '2.jpg'}': cannot be decoded" in str(e.value)


@pytest.mark.parametrize('name, check_images', [('1.jpg', 'header'),
                                                ('1.jpg', 'full'),
                                                ('1.png', 'header')])
def test_truncated_image(tmp_path, name, check_images):
    # mmcv's LoadImageFromFile would fail on it only when its turn comes.
    make_coco(
        tmp_path,
        images=[(name, (200, 150), 'RGB')],
        annotations=[ann(1, 1, [2, 3, 10, 8])])
    path = tmp_path / 'img' / name
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path, check_images=check_images)
    assert f"'{path}': cannot be decoded" in str(e.value)
    with pytest.raises(ValueError, match="check_images must be 'header'"):
        build(tmp_path, check_images=True)


def test_jpeg_check_agrees_with_the_pipeline_decoder(tmp_path):
    """The header check accepts a JPEG exactly when mmcv decodes it."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    path = str(tmp_path / 'x.jpg')
    Image.fromarray(noise).save(path)
    with open(path, 'rb') as f:
        data = f.read()
    variants = dict(
        complete=data,
        trailing_bytes=data + b'\0' * 7,
        no_end_marker=data[:-2],
        cut=data[:len(data) * 3 // 4])
    verdicts = {}
    for name, content in variants.items():
        with open(path, 'wb') as f:
            f.write(content)
        decoded = mmcv.imfrombytes(content) is not None
        verdicts[name] = check_image_file(path, 80, 60) is None
        assert verdicts[name] == decoded, name
    assert verdicts['complete'] and not verdicts['cut']


def test_image_size_differs_from_annotation(tmp_path):
    make_coco(tmp_path)
    write_image(str(tmp_path / 'img' / '1.jpg'), size=(30, 40))
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path)
    assert ("1.jpg': image is 30x40 pixels but the annotation file says "
            '40x30') in str(e.value)


# --------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------
def bad_box_annotations():
    return [
        ann(11, 1, [5, 5, 0, 10]),  # zero width
        ann(12, 1, [5, 5, 10, 0]),  # zero height
        ann(13, 1, [5, 5, -4, 10]),  # negative width
        ann(14, 1, [50, 5, 10, 10]),  # right of the 40x30 image
        ann(15, 1, [5, 5, 10, 10], area=0.0),
        ann(16, 3, [30, 20, 20, 20]),  # overshoots by 10 px: clipped
        ann(17, 3, [-0.5, 2, 10, 10]),  # overshoots by 0.5 px
        ann(18, 3, [1, 1, 10, 10]),
    ]


def test_degenerate_boxes_are_dropped_or_clipped_with_warning(
        tmp_path, log_records):
    make_coco(tmp_path, annotations=bad_box_annotations())
    dataset = build(tmp_path)
    actions = {r['ann_id']: r['action'] for r in dataset.bad_boxes}
    assert actions == {
        11: 'dropped',
        12: 'dropped',
        13: 'dropped',
        14: 'dropped',
        15: 'dropped',
        16: 'clipped'
    }
    assert dataset.get_data_info(0)['instances'] == []
    boxes = [i['bbox'] for i in dataset.get_data_info(2)['instances']]
    assert boxes == [[30, 20, 40, 30], [0, 2, 9.5, 12], [1, 1, 11, 11]]

    warnings = [
        r.getMessage() for r in log_records if r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    msg = warnings[0]
    assert f"'{tmp_path / 'ann.json'}' has 6 bad boxes" in msg
    assert (f"annotation id 14 of '{tmp_path / 'img' / '1.jpg'}': box "
            '[50, 5, 10, 10] lies outside the 40x30 image (dropped)') in msg
    assert 'annotation id 16' in msg and 'clipped to [30, 20, 10, 10]' in msg
    assert 'annotation id 17' not in msg


def test_degenerate_boxes_are_an_error_on_request(tmp_path):
    make_coco(tmp_path, annotations=bad_box_annotations())
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path, on_bad_box='error')
    msg = str(e.value)
    assert "6 bad boxes (5 dropped, 1 clipped) (on_bad_box='error')" in msg
    assert 'annotation id 11' in msg and 'has no size' in msg
    with pytest.raises(ValueError, match="on_bad_box must be 'warn'"):
        build(tmp_path, on_bad_box='ignore')


def test_training_set_without_objects(tmp_path):
    make_coco(tmp_path, annotations=[])
    with pytest.raises(DatasetCheckError, match='nothing to train on'):
        build(tmp_path)
    assert len(build(tmp_path, test_mode=True)) == 3


def test_filter_cfg_that_removes_everything(tmp_path):
    make_coco(tmp_path)
    with pytest.raises(DatasetCheckError) as e:
        build(tmp_path, filter_cfg=dict(filter_empty_gt=True, min_size=32))
    assert 'removed all 3 images' in str(e.value)
    dataset = build(tmp_path, filter_cfg=dict(filter_empty_gt=True))
    assert [dataset.get_data_info(i)['img_id'] for i in range(2)] == [1, 3]
    assert len(dataset) == 2


# --------------------------------------------------------------------------
# Valid but unusual data through the real pipeline
# --------------------------------------------------------------------------
def load_pipeline(scale=(64, 48)):
    return [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=scale, keep_ratio=False),
        dict(type='PackDetInputs')
    ]


def test_image_without_annotations_is_a_negative(tmp_path):
    make_coco(tmp_path)
    dataset = build(tmp_path, pipeline=load_pipeline())
    assert len(dataset) == 3
    out = dataset[1]
    assert out['inputs'].shape == (3, 48, 64)
    assert out['data_samples'].gt_instances.bboxes.shape == (0, 4)
    assert dataset[0]['data_samples'].gt_instances.bboxes.shape == (2, 4)


@pytest.mark.parametrize('name, mode', [('gray.jpg', 'L'), ('gray.png', 'L'),
                                        ('rgba.png', 'RGBA'),
                                        ('palette.png', 'P'),
                                        ('deep.png', 'I;16'),
                                        ('cmyk.jpg', 'CMYK')])
def test_non_rgb_images_load_as_three_channels(tmp_path, name, mode):
    make_coco(
        tmp_path,
        images=[(name, (40, 30), mode)],
        annotations=[ann(1, 1, [2, 3, 10, 8])])
    dataset = build(tmp_path, pipeline=load_pipeline())
    out = dataset[0]
    img = out['inputs']
    assert img.shape == (3, 48, 64) and img.dtype == torch.uint8
    bgr = img[:, 24, 32].tolist()
    if mode in ('RGB', 'RGBA', 'P'):
        expected = [60, 30, 200]  # (200, 30, 60) as BGR
    elif mode == 'I;16':
        expected = [100] * 3
    elif mode == 'CMYK':
        expected = bgr  # colour conversion is the decoder's business
    else:
        expected = [200] * 3
    assert all(abs(a - b) <= 3 for a, b in zip(bgr, expected))
    assert torch.allclose(out['data_samples'].gt_instances.bboxes.tensor,
                          torch.tensor([[3.2, 4.8, 19.2, 17.6]]))


def fna_ssd_train_pipeline():
    """The SSDLite training pipeline of the spec (FNA's)."""
    return [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Expand', mean=MEAN, to_rgb=True, ratio_range=(1, 4)),
        dict(
            type='MinIoURandomCrop',
            min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),
            min_crop_size=0.3),
        dict(type='Resize', scale=(320, 320), keep_ratio=False),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'),
        dict(type='PackDetInputs')
    ]


def test_very_small_image(tmp_path):
    make_coco(
        tmp_path,
        images=[('tiny.png', (8, 8), 'RGB')],
        annotations=[ann(1, 1, [1, 2, 5, 4])])
    dataset = build(tmp_path, pipeline=load_pipeline(scale=(320, 320)))
    out = dataset[0]
    assert out['inputs'].shape == (3, 320, 320)
    assert out['data_samples'].gt_instances.bboxes.tensor.tolist() == [[
        40.0, 80.0, 240.0, 240.0
    ]]

    train = Compose(fna_ssd_train_pipeline())
    np.random.seed(0)
    for _ in range(30):
        out = train(dataset.get_data_info(0))
        assert out['inputs'].shape == (3, 320, 320)
        boxes = out['data_samples'].gt_instances.bboxes.tensor
        assert len(boxes) == 1
        assert (boxes >= 0).all() and (boxes <= 320).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_negative_image_through_the_ssd_pipeline(tmp_path):
    make_coco(tmp_path)
    dataset = build(tmp_path)
    train = Compose(fna_ssd_train_pipeline())
    np.random.seed(0)
    for _ in range(10):
        out = train(dataset.get_data_info(1))
        assert out['inputs'].shape == (3, 320, 320)
        assert len(out['data_samples'].gt_instances) == 0


# --------------------------------------------------------------------------
# The embedded data set
# --------------------------------------------------------------------------
def test_shapes_dataset_on_generated_data(tmp_path, shapes_generator):
    shapes_generator.generate_shapes_dataset(
        str(tmp_path), num_train=10, num_val=4, seed=0)
    dataset = DATASETS.build(
        dict(
            type='ShapesDataset',
            data_root=str(tmp_path),
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            check_images='full',
            pipeline=fna_ssd_train_pipeline()))
    assert dataset.metainfo['classes'] == SHAPES_CLASSES
    assert len(dataset) == 10 and dataset.bad_boxes == []
    labels = set()
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        labels |= {inst['bbox_label'] for inst in info['instances']}
        for inst in info['instances']:
            x1, y1, x2, y2 = inst['bbox']
            assert 0 <= x1 < x2 <= info['width']
            assert 0 <= y1 < y2 <= info['height']
        out = dataset[i]
        assert out['inputs'].shape == (3, 320, 320)
    assert labels <= set(range(5)) and len(labels) >= 3
