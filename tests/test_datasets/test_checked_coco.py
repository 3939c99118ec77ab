"""CheckedCocoDataset: bad COCO-format data fails when the dataset is built,
naming the file and the entries. Each case has a control showing what
mmdet's plain CocoDataset does with the same files."""

import json
import os.path as osp

import mmcv
import numpy as np
import pytest
from helpers import REPO
from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from dn_mmdet.datasets import (
    SHAPES_CLASSES,
    CheckedCocoDataset,
    DatasetCheckError,
    ShapesDataset,
    check_image_file,
)

CLASSES = ('a', 'b')
CATEGORIES = [dict(id=1, name='a'), dict(id=2, name='b')]


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')  # pipelines name mmdet's transforms


def write_image(path, size=(40, 30)):
    Image.new('RGB', size, (200, 30, 60)).save(path)


def ann(id, image_id, bbox=(2, 3, 10, 8), category_id=1):
    return dict(
        id=id,
        image_id=image_id,
        category_id=category_id,
        bbox=list(bbox),
        area=80.0,
        iscrowd=0,
    )


def make_coco(root, images=None, annotations=None, categories=CATEGORIES):
    """ann.json and 40x30 JPEGs in img/ (1.jpg and 3.jpg have objects,
    2.jpg none); ``images`` overrides the image entries."""
    (root / 'img').mkdir(exist_ok=True)
    for i in (1, 2, 3):
        write_image(root / 'img' / f'{i}.jpg')
    if images is None:
        images = [
            dict(id=i, file_name=f'{i}.jpg', width=40, height=30)
            for i in (1, 2, 3)
        ]
    if annotations is None:
        annotations = [ann(1, 1), ann(2, 1, category_id=2), ann(3, 3)]
    (root / 'ann.json').write_text(
        json.dumps(
            dict(images=images, annotations=annotations, categories=categories)
        )
    )
    return root


def build(root, type='CheckedCocoDataset', **kwargs):
    cfg = dict(
        type=type,
        data_root=str(root),
        ann_file='ann.json',
        data_prefix=dict(img='img/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[],
    )
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def labels(dataset):
    infos = [dataset.get_data_info(k) for k in range(len(dataset))]
    return [[i['bbox_label'] for i in info['instances']] for info in infos]


def test_good_data_loads_like_coco_dataset(tmp_path):
    make_coco(tmp_path)
    checked, plain = build(tmp_path), build(tmp_path, type='CocoDataset')
    assert len(checked) == len(plain) == 3  # 2.jpg: a negative, kept
    assert labels(checked) == labels(plain) == [[0, 1], [], [0]]


def test_base_coco_config_uses_the_checked_dataset():
    cfg = Config.fromfile(
        osp.join(REPO, 'configs/_base_/datasets/coco_detection_ssdlite.py')
    )
    assert cfg.train_dataloader.dataset.dataset.type == 'CheckedCocoDataset'
    assert cfg.val_dataloader.dataset.type == 'CheckedCocoDataset'
    assert DATASETS.get('CheckedCocoDataset') is CheckedCocoDataset
    assert issubclass(ShapesDataset, CheckedCocoDataset)


def test_unknown_category_is_an_error(tmp_path):
    make_coco(tmp_path, annotations=[ann(1, 1), ann(7, 3, category_id=9)])
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    msg = str(err.value)
    assert f"annotation file '{tmp_path / 'ann.json'}' is not a valid" in msg
    assert (
        "annotations[1] (id 7): 'category_id' 9 is not the id of an "
        "entry of 'categories'" in msg
    )
    # Control: CocoDataset drops that object without a word.
    assert labels(build(tmp_path, type='CocoDataset')) == [[0], [], []]


def test_unknown_image_and_bad_fields_are_listed(tmp_path):
    bad = [
        ann(1, 9),
        ann(2, 1, bbox=(2, 3, 10)),
        dict(ann(3, 1), area=None),
        dict(ann(4, 1), iscrowd=None),
    ]
    make_coco(tmp_path, annotations=bad)
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    msg = str(err.value)
    for part in (
        "annotations[0] (id 1): 'image_id' 9 is not the id",
        "annotations[1] (id 2): 'bbox' must be [x, y, w, h]",
        "annotations[2] (id 3): 'area' must be a number",
        "annotations[3] (id 4): 'iscrowd' must be 0 or 1",
    ):
        assert part in msg


@pytest.mark.parametrize('type', ['CheckedCocoDataset', 'ShapesDataset'])
def test_empty_images_list_is_an_error(tmp_path, type):
    metainfo = (
        dict(classes=CLASSES)
        if type == 'CheckedCocoDataset'
        else dict(classes=SHAPES_CLASSES)
    )
    categories = [
        dict(id=i, name=n) for i, n in enumerate(metainfo['classes'], 1)
    ]
    make_coco(tmp_path, images=[], annotations=[], categories=categories)
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path, type=type, metainfo=metainfo)
    assert str(tmp_path / 'ann.json') in str(err.value)
    assert "'images' is empty: there is nothing to train or test on" in str(
        err.value
    )


def test_control_empty_images_list_in_coco_dataset(tmp_path):
    make_coco(tmp_path, images=[], annotations=[])
    with pytest.raises(ValueError, match='need at least one array'):
        build(tmp_path, type='CocoDataset')


@pytest.mark.parametrize(
    'file_name', ['../1.jpg', 'img/../../1.jpg', '/etc/hostname']
)
def test_file_name_leaving_the_image_folder_is_an_error(tmp_path, file_name):
    images = [dict(id=1, file_name=file_name, width=40, height=30)]
    make_coco(tmp_path, images=images, annotations=[ann(1, 1)])
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    assert (
        f"images[0] (id 1): 'file_name' {file_name!r} leaves the image "
        'folder' in str(err.value)
    )
    # Control: CocoDataset reads whatever the path points at.
    info = build(tmp_path, type='CocoDataset').get_data_info(0)
    assert not osp.abspath(info['img_path']).startswith(str(tmp_path / 'img'))


def test_wrong_image_size_is_an_error(tmp_path):
    make_coco(tmp_path)
    write_image(tmp_path / 'img' / '3.jpg', size=(80, 60))
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    msg = str(err.value)
    assert '1 of the 3 images' in msg
    assert (
        f"'{tmp_path / 'img' / '3.jpg'}': the image is 80x60 pixels but "
        'the annotation file says 40x30' in msg
    )
    # Control: CocoDataset takes the annotation's word for it.
    assert build(tmp_path, type='CocoDataset').get_data_info(2)['width'] == 40
    # The check can be turned off (e.g. for a huge data set).
    assert len(build(tmp_path, check_images=False)) == 3


def test_exif_rotated_image_may_be_annotated_either_way(tmp_path):
    make_coco(
        tmp_path,
        images=[dict(id=1, file_name='1.jpg', width=30, height=40)],
        annotations=[ann(1, 1)],
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: OpenCV loads it as 30x40
    Image.new('RGB', (40, 30)).save(tmp_path / 'img' / '1.jpg', exif=exif)
    assert mmcv.imread(str(tmp_path / 'img' / '1.jpg')).shape[:2] == (40, 30)
    assert len(build(tmp_path)) == 1


def test_missing_corrupt_and_truncated_images(tmp_path):
    images = [
        dict(id=i, file_name=f'{i}.jpg', width=200, height=150)
        for i in (1, 2, 3)
    ]
    make_coco(tmp_path, images=images)
    (tmp_path / 'img' / '1.jpg').unlink()
    (tmp_path / 'img' / '2.jpg').write_bytes(b'no image' * 20)
    noise = np.random.default_rng(0).integers(0, 255, (150, 200, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / 'img' / '3.jpg')
    data = (tmp_path / 'img' / '3.jpg').read_bytes()
    (tmp_path / 'img' / '3.jpg').write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    msg = str(err.value)
    assert '3 of the 3 images' in msg
    assert f"'{tmp_path / 'img' / '1.jpg'}': file not found" in msg
    assert f"'{tmp_path / 'img' / '2.jpg'}': cannot be read as an image" in msg
    assert (
        f"'{tmp_path / 'img' / '3.jpg'}': cannot be decoded by OpenCV" in msg
    )


def test_jpeg_check_agrees_with_the_pipeline_decoder(tmp_path):
    """A JPEG passes exactly when mmcv's decoder reads it."""
    noise = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    path = tmp_path / 'x.jpg'
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    for content in (
        data,
        data + b'\0' * 7,
        data[:-2],
        data[: len(data) * 3 // 4],
    ):
        path.write_bytes(content)
        decoded = mmcv.imfrombytes(content) is not None
        assert (check_image_file(str(path), 80, 60) is None) == decoded


def test_truncated_annotation_file_is_named(tmp_path):
    make_coco(tmp_path)
    path = tmp_path / 'ann.json'
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path)
    assert f"annotation file '{path}' (150 bytes) is not valid json" in str(
        err.value
    )
    assert 'truncated' in str(err.value)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='ann.json'):
        build(tmp_path)


@pytest.mark.parametrize(
    'classes, problem',
    [
        (('a', 'zebra'), "['zebra'] are not categories of the file"),
        (('b', 'a'), 'are in another order than the file'),
    ],
)
def test_classes_must_be_the_files_categories_in_order(
    tmp_path, classes, problem
):
    make_coco(tmp_path)
    with pytest.raises(DatasetCheckError) as err:
        build(tmp_path, metainfo=dict(classes=classes))
    assert problem in str(err.value)
    assert "has the categories ['a', 'b']" in str(err.value)


def test_control_misspelt_class_shifts_labels_in_coco_dataset(tmp_path):
    make_coco(tmp_path)
    plain = build(
        tmp_path, type='CocoDataset', metainfo=dict(classes=('typo', 'b'))
    )
    # Category 'b' gets label 0, the label named 'typo'; 'a' is dropped.
    assert labels(plain) == [[0], [], []]


def test_filter_that_removes_everything_is_an_error(tmp_path):
    make_coco(tmp_path, annotations=[])
    filter_cfg = dict(filter_empty_gt=True)
    with pytest.raises(DatasetCheckError, match='removed all 3 images'):
        build(tmp_path, filter_cfg=filter_cfg)
    with pytest.raises(ValueError, match='need at least one array'):
        build(tmp_path, type='CocoDataset', filter_cfg=filter_cfg)


def test_shapes_dataset_on_generated_data(shapes_data):
    dataset = DATASETS.build(
        dict(
            type='ShapesDataset',
            data_root=shapes_data,
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            pipeline=[],
        )
    )
    assert dataset.metainfo['classes'] == SHAPES_CLASSES
    assert len(dataset) == 8
