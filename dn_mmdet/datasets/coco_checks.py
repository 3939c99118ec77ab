"""Checks of COCO-format annotation and image files, where users' data enters.

mmdet's ``CocoDataset`` trusts its files: a truncated json is a bare
``JSONDecodeError``, an annotation of an unknown category or image is dropped
without a word, an image whose size differs from the annotation's, or whose
``file_name`` leaves the image folder, is used as it is, an empty ``images``
list ends in numpy's "need at least one array to concatenate", and a missing
or broken image stops training when its turn comes. These functions find all
of that when the dataset is built and name the file and the entries.
"""

import json
import math
import os.path as osp
from numbers import Real
from typing import Iterable, List, Optional, Sequence

import mmcv
from PIL import Image

__all__ = [
    'DatasetCheckError',
    'load_coco_json',
    'check_coco_dict',
    'check_image_file',
]

# How many problems an error message lists before summarising the rest.
MAX_LISTED = 20
# EXIF orientations that swap width and height (OpenCV, mmcv's decoder,
# applies them, so an image may be annotated with either size).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


class DatasetCheckError(ValueError):
    """A data set's files cannot be used; the message says which and why."""


def format_problems(header: str, problems: Sequence[str]) -> str:
    """``header`` followed by up to :data:`MAX_LISTED` problems, one a line."""
    lines = [header] + [f'  - {p}' for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f'  ... and {len(problems) - MAX_LISTED} more')
    return '\n'.join(lines)


def load_coco_json(path: str) -> dict:
    """Read a COCO annotation file, with errors that name it.

    Raises:
        FileNotFoundError: The file does not exist.
        DatasetCheckError: It is empty, not json (e.g. a truncated download)
            or not a json object.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f"annotation file '{path}' does not exist (check data_root and "
            'ann_file in the dataset config)'
        )
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DatasetCheckError(
            f"annotation file '{path}' ({len(raw)} bytes) is not valid json: "
            f'{err}. Is it truncated (an interrupted download or copy)?'
        ) from None
    if not isinstance(data, dict):
        raise DatasetCheckError(
            f"annotation file '{path}' holds a json {type(data).__name__}, "
            "not an object with 'images', 'annotations' and 'categories'"
        )
    return data


def _is_number(value) -> bool:
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _duplicates(values: Iterable) -> List:
    seen, dup = set(), []
    for value in values:
        if value in seen:
            dup.append(value)
        seen.add(value)
    return dup


def _entries(data: dict, key: str, problems: List[str]) -> List[dict]:
    entries = data.get(key, [] if key == 'annotations' else None)
    if not isinstance(entries, list):
        problems.append(f"'{key}' is missing or not a list")
        return []
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict)]
    if bad:
        problems.append(f'{key}{bad[:5]} are not objects')
    return [e for e in entries if isinstance(e, dict)]


def _file_name_problem(name) -> Optional[str]:
    if not isinstance(name, str) or not name:
        return f"'file_name' must be a non-empty string, got {name!r}"
    if osp.isabs(name) or '..' in name.replace('\\', '/').split('/'):
        return (
            f"'file_name' {name!r} leaves the image folder "
            "(data_root + data_prefix['img']): it must be a relative "
            "path without '..'"
        )
    return None


def check_coco_dict(data: dict, path: str) -> None:
    """Check that a COCO detection dictionary is complete and consistent.

    Checked: at least one image; unique integer image and category ids;
    unique category names; each image's ``file_name`` (relative, inside the
    image folder), ``width`` and ``height``; each annotation's ``image_id``
    and ``category_id`` (defined in the file), ``bbox`` (four finite
    numbers), ``area`` and ``iscrowd`` (read by mmdet and by pycocotools'
    evaluation). A file without ``annotations`` (image info only, like COCO's
    test-dev) passes.

    Raises:
        DatasetCheckError: Listing the problems, naming the entries.
    """
    problems: List[str] = []
    images = _entries(data, 'images', problems)
    categories = _entries(data, 'categories', problems)
    annotations = _entries(data, 'annotations', problems)
    if not images and isinstance(data.get('images'), list):
        problems.append(
            "'images' is empty: there is nothing to train or test on"
        )

    for i, img in enumerate(images):
        where = f'images[{i}] (id {img.get("id")!r})'
        if not _is_id(img.get('id')):
            problems.append(f"{where}: 'id' must be an integer")
        name_problem = _file_name_problem(img.get('file_name'))
        if name_problem:
            problems.append(f'{where}: {name_problem}')
        for key in ('width', 'height'):
            if not (_is_number(img.get(key)) and img[key] > 0):
                problems.append(
                    f"{where}: '{key}' must be a positive "
                    f'number, got {img.get(key)!r}'
                )
    img_ids = [img['id'] for img in images if _is_id(img.get('id'))]
    problems += [
        f'image id {i} is used more than once' for i in _duplicates(img_ids)
    ]

    for i, cat in enumerate(categories):
        if not (_is_id(cat.get('id')) and isinstance(cat.get('name'), str)):
            problems.append(
                f"categories[{i}] needs an integer 'id' and a "
                f"string 'name', got {cat}"
            )
    cat_ids = [cat['id'] for cat in categories if _is_id(cat.get('id'))]
    problems += [
        f'category id {i} is used more than once' for i in _duplicates(cat_ids)
    ]
    problems += [
        f'category name {n!r} is used more than once'
        for n in _duplicates(
            cat['name']
            for cat in categories
            if isinstance(cat.get('name'), str)
        )
    ]

    img_ids, cat_ids = set(img_ids), set(cat_ids)
    for i, ann in enumerate(annotations):
        where = f'annotations[{i}] (id {ann.get("id")!r})'
        if ann.get('image_id') not in img_ids:
            problems.append(
                f"{where}: 'image_id' {ann.get('image_id')!r} "
                "is not the id of an entry of 'images'"
            )
        if ann.get('category_id') not in cat_ids:
            problems.append(
                f"{where}: 'category_id' {ann.get('category_id')!r} is not "
                "the id of an entry of 'categories'"
            )
        bbox = ann.get('bbox')
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(v) for v in bbox)
        ):
            problems.append(
                f"{where}: 'bbox' must be [x, y, w, h] of four "
                f'finite numbers, got {bbox!r}'
            )
        if not _is_number(ann.get('area')):
            problems.append(
                f"{where}: 'area' must be a number, got {ann.get('area')!r}"
            )
        if ann.get('iscrowd') not in (0, 1):
            problems.append(
                f"{where}: 'iscrowd' must be 0 or 1, got "
                f'{ann.get("iscrowd")!r}'
            )
    if problems:
        raise DatasetCheckError(
            format_problems(
                f"annotation file '{path}' is not a valid COCO detection "
                f'file ({len(problems)} problems):',
                problems,
            )
        )


def check_image_file(path: str, width: float, height: float) -> Optional[str]:
    """What is wrong with an image file, or None if it can be used.

    Reads the header only (its size), except for a JPEG without its
    end-of-image marker, which is decoded as ``LoadImageFromFile`` will
    (OpenCV loads nothing from a badly truncated JPEG).

    Args:
        path (str): Local path of the image.
        width (float): Width the annotation file gives.
        height (float): Height the annotation file gives.
    """
    if not osp.isfile(path):
        return 'file not found'
    try:
        with Image.open(path) as img:
            size, fmt = img.size, img.format
            transposed = (
                img.getexif().get(_EXIF_ORIENTATION, 1)
                in _TRANSPOSING_ORIENTATIONS
            )
    except Exception as err:  # PIL: UnidentifiedImageError, OSError, ...
        return f'cannot be read as an image ({err})'
    if fmt == 'JPEG':
        with open(path, 'rb') as f:
            f.seek(-2, 2)
            complete = f.read(2) == b'\xff\xd9'
        if not complete and mmcv.imread(path) is None:
            return 'cannot be decoded by OpenCV: the file is truncated'
    if size != (width, height) and not (
        transposed and size[::-1] == (width, height)
    ):
        return (
            f'the image is {size[0]}x{size[1]} pixels but the annotation '
            f'file says {width}x{height}'
        )
    return None
