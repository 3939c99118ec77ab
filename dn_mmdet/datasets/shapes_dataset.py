"""The dataset class of the embedded synthetic shapes data."""
from mmdet.registry import DATASETS

from .checked_coco import CheckedCocoDataset
from .shapes import SHAPES_METAINFO


@DATASETS.register_module()
class ShapesDataset(CheckedCocoDataset):
    """The synthetic shapes data set (see :mod:`dn_mmdet.datasets.shapes`).

    A :class:`CheckedCocoDataset` with the five shape classes as metainfo, so
    a config needs only the paths::

        dict(type='ShapesDataset', data_root='data/shapes/',
             ann_file='annotations/instances_train.json',
             data_prefix=dict(img='train/'), pipeline=...)

    Make the files with ``tools/misc/make_shapes_dataset.py``.
    """

    METAINFO = SHAPES_METAINFO
