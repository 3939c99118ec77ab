"""A ``CocoDataset`` that checks its files when it is built."""
import logging
import os.path as osp
import time
from typing import List, Optional, Sequence, Union

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS
from mmengine.logging import print_log

from .coco_checks import (DatasetCheckError, check_coco_dict, check_image_file,
                          format_problems, load_coco_json)

__all__ = ['CheckedCOCO', 'CheckedCocoDataset']

# A box may overshoot the image by this much (pixels) without a warning: the
# rounding of annotation tools, common in COCO itself. It is still clipped.
_BORDER_TOLERANCE = 1.0


class CheckedCOCO(COCO):
    """mmdet's COCO API that checks the annotation file before indexing it.

    Every problem of the file (not json, truncated, missing fields, dangling
    ids, duplicate ids, ...) raises :class:`DatasetCheckError` naming the file
    and the entries; see :func:`check_coco_dict`. Asking for categories by a
    name the file does not have is an error too, where pycocotools would
    silently return fewer ids (and mmdet then drop every box of the missing
    classes).

    Args:
        annotation_file (str): Local path of the COCO json file.
    """

    def __init__(self, annotation_file: str) -> None:
        dataset = load_coco_json(annotation_file)
        check_coco_dict(dataset, annotation_file)
        # Index the checked dict instead of letting pycocotools read the
        # file a second time.
        super().__init__(annotation_file=None)
        self.annotation_file = annotation_file
        self.dataset = dataset
        self.createIndex()
        self.img_ann_map = self.imgToAnns
        self.cat_img_map = self.catToImgs

    def get_cat_ids(
        self,
        cat_names: Union[str, Sequence[str]] = (),
        sup_names: Sequence[str] = (),
        cat_ids: Sequence[int] = ()
    ) -> List[int]:
        """Category ids, as pycocotools' ``getCatIds``; all names must exist.

        Raises:
            DatasetCheckError: Some of ``cat_names`` are not categories of
                the file.
        """
        names = [cat_names] if isinstance(cat_names, str) else list(cat_names)
        known = [cat['name'] for cat in self.dataset['categories']]
        missing = [name for name in names if name not in known]
        if missing:
            raise DatasetCheckError(
                f'classes {missing} are not categories of annotation file '
                f"'{self.annotation_file}', whose categories are {known}; "
                "check metainfo['classes'] in the dataset config")
        return self.getCatIds(names, list(sup_names), list(cat_ids))


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """COCO dataset that refuses bad data when it is built, not mid-training.

    What is checked, in ``load_data_list`` (so at construction, or at
    ``full_init`` when ``lazy_init=True``):

    - The annotation file: exists, is complete json, and is a consistent
      COCO file (:class:`CheckedCOCO`). Otherwise :class:`DatasetCheckError`
      (``FileNotFoundError`` when missing) naming the file and entries.
    - The classes of ``metainfo`` are categories of the file.
    - Every image the file lists (``check_images``): exists, decodes (see
      :func:`check_image_file`) and has the size the file gives. All bad
      images are reported in one :class:`DatasetCheckError`.
    - Boxes, before mmdet's ``parse_data_info`` sees them (which would
      silently drop some and keep others that leave the image): a box of no
      size (``w`` or ``h`` <= 0, or ``area`` <= 0), or of less than one
      pixel inside the image, is dropped; a box that overshoots the image
      by more than one pixel is clipped to it (smaller overshoots are
      clipped quietly). Both are logged as warnings naming the annotation
      id and image file (``on_bad_box='warn'``), or raise one error listing
      them (``on_bad_box='error'``). The records stay in
      :attr:`bad_boxes`. Evaluation (``CocoMetric``) reads the annotation
      file itself and is not affected by this.
    - A training set (``test_mode=False``) with no object at all, or that
      ``filter_cfg`` empties, is an error.

    Images without annotations are valid negatives and kept (unless
    ``filter_cfg=dict(filter_empty_gt=True)``). Grayscale, palette and RGBA
    images need no special handling: mmcv's ``LoadImageFromFile`` with its
    default ``color_type='color'`` decodes them as 3-channel images.

    Args:
        check_images (str): ``'header'`` reads each image's header (and
            decodes JPEGs that lack their end marker with OpenCV, as the
            pipeline will), ``'full'`` decodes every image, ``'none'``
            skips image checks. Images on a remote storage backend are not
            checked. Defaults to 'header'.
        on_bad_box (str): ``'warn'`` or ``'error'``, see above. Defaults to
            'warn'.
        **kwargs: Arguments of :class:`mmdet.datasets.CocoDataset`.
    """

    COCOAPI = CheckedCOCO

    def __init__(self,
                 *args,
                 check_images: str = 'header',
                 on_bad_box: str = 'warn',
                 **kwargs) -> None:
        if check_images not in ('header', 'full', 'none'):
            raise ValueError("check_images must be 'header', 'full' or "
                             f"'none', got {check_images!r}")
        if on_bad_box not in ('warn', 'error'):
            raise ValueError("on_bad_box must be 'warn' or 'error', got "
                             f'{on_bad_box!r}')
        self.check_images = check_images
        self.on_bad_box = on_bad_box
        #: One record per dropped or clipped box: ``dict(ann_id, img_path,
        #: bbox, problem, action)`` with ``action`` 'dropped' or 'clipped'.
        self.bad_boxes: List[dict] = []
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------
    # mmdet hooks
    # ------------------------------------------------------------------
    def load_data_list(self) -> List[dict]:
        """Load and check the annotation file, its boxes and its images."""
        if 'img' not in self.data_prefix:
            # CocoDataset would fail on it with a bare KeyError.
            raise DatasetCheckError(
                "data_prefix needs the key 'img' (the image folder), got "
                f'data_prefix={self.data_prefix}')
        self.bad_boxes = []
        data_list = super().load_data_list()
        self._report_bad_boxes()
        if self.check_images != 'none':
            self._check_image_files(data_list)
        num_objects = sum(len(info['instances']) for info in data_list)
        if not self.test_mode and data_list and num_objects == 0:
            raise DatasetCheckError(
                f"annotation file '{self.ann_file}' has no usable object of "
                f"the classes {self.metainfo['classes']} in any of its "
                f'{len(data_list)} images: nothing to train on')
        return data_list

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        """Clip or drop bad boxes, then parse as ``CocoDataset`` does."""
        img_info = raw_data_info['raw_img_info']
        img_path = osp.join(self.data_prefix['img'], img_info['file_name'])
        anns = []
        for ann in raw_data_info['raw_ann_info']:
            ann = self._sanitize_box(ann, img_info, img_path)
            if ann is not None:
                anns.append(ann)
        return super().parse_data_info(dict(raw_data_info, raw_ann_info=anns))

    def filter_data(self) -> List[dict]:
        """Filter as ``CocoDataset``, but refuse to filter everything away."""
        kept = super().filter_data()
        if len(kept) < len(self.data_list):
            print_log(
                f'{type(self).__name__}: filter_cfg={self.filter_cfg} kept '
                f'{len(kept)} of {len(self.data_list)} images of '
                f"'{self.ann_file}'",
                logger='current')
        if self.data_list and not kept:
            raise DatasetCheckError(
                f'filter_cfg={self.filter_cfg} removed all '
                f"{len(self.data_list)} images of '{self.ann_file}' "
                '(images without objects, or smaller than min_size)')
        return kept

    # ------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------
    def _sanitize_box(self, ann: dict, img_info: dict,
                      img_path: str) -> Optional[dict]:
        """The annotation with its box clipped to the image, or None if the
        box is degenerate; records what it did in :attr:`bad_boxes`."""
        if ann.get('ignore', False):
            return ann  # mmdet skips these anyway
        x, y, w, h = ann['bbox']
        width, height = img_info['width'], img_info['height']
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + w, width), min(y + h, height)
        problem, action = None, 'dropped'
        if w <= 0 or h <= 0:
            problem = f'box {ann["bbox"]} has no size (w or h <= 0)'
        elif ann['area'] <= 0:
            problem = f'area is {ann["area"]}'
        elif x2 <= x1 or y2 <= y1:
            problem = (f'box {ann["bbox"]} lies outside the {width}x{height} '
                       'image')
        elif x2 - x1 < 1 or y2 - y1 < 1:
            problem = (f'box {ann["bbox"]} covers less than one pixel of the '
                       f'{width}x{height} image')
        else:
            overshoot = max(-x, -y, x + w - width, y + h - height)
            if overshoot > 0:
                clipped = [x1, y1, x2 - x1, y2 - y1]
                ann = dict(ann, bbox=clipped)
                if overshoot > _BORDER_TOLERANCE:
                    problem = (f'box {[x, y, w, h]} extends beyond the '
                               f'{width}x{height} image; clipped to '
                               f'{clipped}')
                    action = 'clipped'
            if problem is None:
                return ann
        self.bad_boxes.append(
            dict(
                ann_id=ann.get('id'),
                img_path=img_path,
                bbox=list(ann['bbox']),
                problem=problem,
                action=action))
        return None if action == 'dropped' else ann

    def _report_bad_boxes(self) -> None:
        if not self.bad_boxes:
            return
        lines = [
            f"annotation id {r['ann_id']} of '{r['img_path']}': "
            f"{r['problem']} ({r['action']})" for r in self.bad_boxes
        ]
        num_dropped = sum(r['action'] == 'dropped' for r in self.bad_boxes)
        header = (f"annotation file '{self.ann_file}' has "
                  f'{len(self.bad_boxes)} bad boxes ({num_dropped} dropped, '
                  f'{len(self.bad_boxes) - num_dropped} clipped)')
        if self.on_bad_box == 'error':
            raise DatasetCheckError(
                format_problems(header + " (on_bad_box='error'):", lines))
        print_log(
            format_problems(header + ':', lines),
            logger='current',
            level=logging.WARNING)

    def _check_image_files(self, data_list: List[dict]) -> None:
        """Check every image file; raise one error listing all bad ones."""
        if self.backend_args is not None or any('://' in info['img_path']
                                                for info in data_list[:1]):
            print_log(
                f'{type(self).__name__}: images on a storage backend are '
                'not checked',
                logger='current')
            return
        start = time.perf_counter()
        problems = []
        for info in data_list:
            problem = check_image_file(
                info['img_path'],
                info['width'],
                info['height'],
                full_decode=self.check_images == 'full')
            if problem is not None:
                problems.append(f"'{info['img_path']}': {problem}")
        if problems:
            img_dir = self.data_prefix['img']
            hint = ''
            if len(problems) == len(data_list) and not osp.isdir(img_dir):
                hint = (f" The image folder '{img_dir}' does not exist: "
                        "check data_root and data_prefix['img'].")
            raise DatasetCheckError(
                format_problems(
                    f'{len(problems)} of the {len(data_list)} images of '
                    f"annotation file '{self.ann_file}' cannot be used."
                    f'{hint}', problems))
        print_log(
            f'{type(self).__name__}: checked {len(data_list)} images '
            f"({self.check_images}) of '{self.ann_file}' in "
            f'{time.perf_counter() - start:.1f} s',
            logger='current',
            level=logging.DEBUG)
