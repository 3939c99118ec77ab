"""A ``CocoDataset`` that checks its files when it is built."""

import logging
import time
from typing import List, Sequence, Union

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS
from mmengine.logging import print_log

from .coco_checks import (
    DatasetCheckError,
    check_coco_dict,
    check_image_file,
    format_problems,
    load_coco_json,
)

__all__ = ['CheckedCOCO', 'CheckedCocoDataset']


class CheckedCOCO(COCO):
    """mmdet's COCO API that checks the annotation file before indexing it
    (:func:`check_coco_dict`), and the classes asked for (:meth:`get_cat_ids`).

    Args:
        annotation_file (str): Local path of the COCO json file.
    """

    def __init__(self, annotation_file: str) -> None:
        dataset = load_coco_json(annotation_file)
        check_coco_dict(dataset, annotation_file)
        super().__init__(annotation_file=None)  # index the checked dict
        self.annotation_file = annotation_file
        self.dataset = dataset
        self.createIndex()
        self.img_ann_map = self.imgToAnns
        self.cat_img_map = self.catToImgs

    def get_cat_ids(
        self,
        cat_names: Union[str, Sequence[str]] = (),
        sup_names: Sequence[str] = (),
        cat_ids: Sequence[int] = (),
    ) -> List[int]:
        """pycocotools' ``getCatIds``, refusing class names that are not
        categories of the file, or are listed in another order.

        pycocotools returns the ids of the names it finds, in the file's
        order, and mmdet numbers the labels in that order: a missing or
        misspelt class would silently shift every label after it, another
        order would put wrong names on the classes.
        """
        names = [cat_names] if isinstance(cat_names, str) else list(cat_names)
        in_file = [cat['name'] for cat in self.dataset['categories']]
        missing = [name for name in names if name not in in_file]
        ordered = [name for name in in_file if name in names]
        if missing or ordered != names:
            problem = (
                f'{missing} are not categories of the file'
                if missing
                else 'are in another order than the file'
            )
            raise DatasetCheckError(
                f"metainfo['classes'] of the dataset {problem}: annotation "
                f"file '{self.annotation_file}' has the categories "
                f'{in_file}; list the classes in that order'
            )
        return self.getCatIds(names, list(sup_names), list(cat_ids))


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """A ``CocoDataset`` that refuses bad data when it is built, not hours
    into training; the base COCO config uses it, so configs of COCO-format
    data sets that inherit it do too.

    Checked when the data list is loaded (see :mod:`.coco_checks`): the
    annotation file (complete json, consistent ids, categories of every
    annotation, ``file_name`` inside the image folder, at least one image),
    the classes of ``metainfo``, and every image it lists: it exists, its
    header reads, it has the size the file gives (``check_images``). A
    ``filter_cfg`` that removes every image is an error too.

    Args:
        check_images (bool): Check every image file (its header only, so
            a data set on slow storage may turn it off). Images on a storage
            backend (``backend_args``) are not checked. Defaults to True.
        **kwargs: Arguments of :class:`mmdet.datasets.CocoDataset`.
    """

    COCOAPI = CheckedCOCO

    def __init__(self, *args, check_images: bool = True, **kwargs) -> None:
        self.check_images = check_images
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        data_list = super().load_data_list()
        if self.check_images and self.backend_args is None:
            self._check_image_files(data_list)
        return data_list

    def filter_data(self) -> List[dict]:
        kept = super().filter_data()
        if self.data_list and not kept:
            raise DatasetCheckError(
                f'filter_cfg={self.filter_cfg} removed all '
                f"{len(self.data_list)} images of '{self.ann_file}' (images "
                'without objects of the classes, or smaller than min_size)'
            )
        return kept

    def _check_image_files(self, data_list: List[dict]) -> None:
        start = time.perf_counter()
        problems = []
        for info in data_list:
            problem = check_image_file(
                info['img_path'], info['width'], info['height']
            )
            if problem is not None:
                problems.append(f"'{info['img_path']}': {problem}")
        if problems:
            raise DatasetCheckError(
                format_problems(
                    f'{len(problems)} of the {len(data_list)} images of '
                    f"annotation file '{self.ann_file}' cannot be used "
                    "(check data_root and data_prefix['img']):",
                    problems,
                )
            )
        print_log(
            f'{type(self).__name__}: checked the {len(data_list)} images of '
            f"'{self.ann_file}' in {time.perf_counter() - start:.1f} s",
            logger='current',
            level=logging.INFO,
        )
