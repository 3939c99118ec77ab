"""Datasets: the embedded synthetic shapes data and a checking COCO dataset.

Importing registers ``CheckedCocoDataset`` and ``ShapesDataset`` in mmdet's
``DATASETS``.
"""
from .checked_coco import CheckedCOCO, CheckedCocoDataset
from .coco_checks import (DatasetCheckError, check_coco_dict, check_image_file,
                          load_coco_json)
from .shapes import (SHAPES_CLASSES, SHAPES_METAINFO, ensure_shapes_dataset,
                     generate_shapes_dataset, render_shapes_image,
                     shapes_layout)
from .shapes_dataset import ShapesDataset

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_METAINFO', 'generate_shapes_dataset',
    'ensure_shapes_dataset', 'render_shapes_image', 'shapes_layout',
    'CheckedCOCO', 'CheckedCocoDataset', 'ShapesDataset', 'DatasetCheckError',
    'check_coco_dict', 'check_image_file', 'load_coco_json'
]
