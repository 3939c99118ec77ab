"""The dataset class of the embedded synthetic shapes data."""

from mmdet.registry import DATASETS

from .checked_coco import CheckedCocoDataset

#: Class names, in label order; category ``i + 1`` is ``SHAPES_CLASSES[i]``.
SHAPES_CLASSES = ('circle', 'square', 'triangle', 'star', 'cross')

#: ``metainfo`` of the embedded data set (classes and a visualisation palette).
SHAPES_METAINFO = dict(
    classes=SHAPES_CLASSES,
    palette=[
        (220, 20, 60),
        (0, 114, 189),
        (237, 177, 32),
        (119, 172, 48),
        (126, 47, 142),
    ],
)


@DATASETS.register_module()
class ShapesDataset(CheckedCocoDataset):
    """The synthetic shapes data set, written by
    ``tools/misc/make_shapes_dataset.py``.

    A :class:`CheckedCocoDataset` with the five shape classes as metainfo, so
    a config needs only the paths::

        dict(type='ShapesDataset', data_root='data/shapes/',
             ann_file='annotations/instances_train.json',
             data_prefix=dict(img='train/'), pipeline=...)
    """

    METAINFO = SHAPES_METAINFO
