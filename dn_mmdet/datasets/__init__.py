"""Datasets: COCO-format data checked where it enters, and the class of the
embedded shapes data. Their generators (:mod:`.shapes_generator`,
:mod:`.shapes_cls_generator`, drawing with :mod:`.shapes_render` and
keeping their folders with :mod:`.generated_folder`) and the ImageNet-100
converter (:mod:`.imagenet100`) are imported only where used.

Importing registers ``CheckedCocoDataset`` and ``ShapesDataset`` in mmdet's
``DATASETS``.
"""

from .checked_coco import CheckedCOCO, CheckedCocoDataset
from .coco_checks import (
    DatasetCheckError,
    check_coco_dict,
    check_image_file,
    load_coco_json,
)
from .shapes_dataset import SHAPES_CLASSES, SHAPES_METAINFO, ShapesDataset

__all__ = [
    'CheckedCOCO',
    'CheckedCocoDataset',
    'DatasetCheckError',
    'check_coco_dict',
    'check_image_file',
    'load_coco_json',
    'SHAPES_CLASSES',
    'SHAPES_METAINFO',
    'ShapesDataset',
]
