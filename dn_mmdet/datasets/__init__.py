"""Datasets: the embedded synthetic shapes data and a checking COCO dataset.

Importing registers ``CheckedCocoDataset`` and ``ShapesDataset`` in mmdet's
``DATASETS``. The shapes generator is a tool:
``tools/misc/shapes_generator.py``.
"""
from .checked_coco import CheckedCOCO, CheckedCocoDataset
from .coco_checks import (DatasetCheckError, check_coco_dict, check_image_file,
                          load_coco_json)
from .shapes_dataset import SHAPES_CLASSES, SHAPES_METAINFO, ShapesDataset

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_METAINFO', 'CheckedCOCO', 'CheckedCocoDataset',
    'ShapesDataset', 'DatasetCheckError', 'check_coco_dict',
    'check_image_file', 'load_coco_json'
]
