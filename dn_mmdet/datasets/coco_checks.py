"""Checks of COCO annotation files and image files, run before training.

mmdet's ``CocoDataset`` trusts its input: a truncated json surfaces as a bare
``JSONDecodeError`` that does not name the file, a missing or
truncated image as a failure in a dataloader worker when its turn comes
(possibly hours into training), and degenerate boxes are dropped without a
word. The functions here find all of these at once, when the dataset is
built, and name the file and the entry at fault.

They are plain functions on plain data so that tools can use them without
building a dataset; :class:`~dn_mmdet.datasets.CheckedCocoDataset` wires them
into mmdet.
"""
import json
import math
import os
import os.path as osp
import re
from numbers import Real
from typing import Iterable, List, Optional, Sequence

import mmcv
from PIL import Image, UnidentifiedImageError

__all__ = [
    'DatasetCheckError', 'load_coco_json', 'check_coco_dict',
    'check_image_file', 'format_problems'
]

# How many problems an error message lists before summarising the rest.
MAX_LISTED = 20

# EXIF orientations that swap width and height; OpenCV (mmcv's default
# decoder) applies them when it loads an image.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_JPEG_EOI = b'\xff\xd9'


class DatasetCheckError(ValueError):
    """A data set's files cannot be used; the message says which and why."""


def format_problems(header: str, problems: Sequence[str]) -> str:
    """``header`` followed by up to :data:`MAX_LISTED` problems, one a line."""
    lines = [header] + [f'  - {p}' for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f'  ... and {len(problems) - MAX_LISTED} more')
    return '\n'.join(lines)


def _ends_early(text: str) -> bool:
    """Whether invalid json text looks like the start of a longer document
    (an unclosed string, object or array): the signature of an interrupted
    download or copy."""
    # Drop complete strings (brackets inside them do not count); a quote
    # left over opens a string that never ends.
    skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', '', text)
    if '"' in skeleton:
        return True
    opened = skeleton.count('{') + skeleton.count('[')
    return opened > skeleton.count('}') + skeleton.count(']')


def load_coco_json(path: str) -> dict:
    """Read a COCO annotation file, with errors that name it.

    Args:
        path (str): Local path of the json file.

    Returns:
        dict: The parsed file.

    Raises:
        FileNotFoundError: The file does not exist.
        DatasetCheckError: The file is a folder, is empty, is not valid json
            (for example a truncated download) or is not a json object.
    """
    if not osp.exists(path):
        raise FileNotFoundError(
            f"annotation file '{path}' does not exist (check data_root and "
            'ann_file in the dataset config)')
    if osp.isdir(path):
        raise DatasetCheckError(
            f"annotation file '{path}' is a folder, not a COCO json file")
    if osp.getsize(path) == 0:
        raise DatasetCheckError(f"annotation file '{path}' is empty")
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as e:
        raise DatasetCheckError(
            f"annotation file '{path}' is not UTF-8 text ({e}); "
            'is it a json file?') from None
    except json.JSONDecodeError as e:
        hint = ('the file ends too early: it looks truncated'
                if _ends_early(e.doc) else 'the file is corrupt or not json')
        raise DatasetCheckError(
            f"annotation file '{path}' is not valid json ({e.msg}: line "
            f'{e.lineno}, column {e.colno}, char {e.pos} of {len(e.doc)}); '
            f'{hint}') from None
    if not isinstance(data, dict):
        raise DatasetCheckError(
            f"annotation file '{path}' holds a json {type(data).__name__}, "
            "not an object with 'images', 'annotations' and 'categories'")
    return data


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and \
        math.isfinite(value)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entries(data: dict, key: str, problems: List[str]) -> List[dict]:
    """The list ``data[key]``; problems are recorded, not raised."""
    entries = data.get(key)
    if not isinstance(entries, list):
        problems.append(
            f"'{key}' is missing or not a list" if entries is
            None else f"'{key}' is a {type(entries).__name__}, not a list")
        return []
    good = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            good.append(entry)
        else:
            problems.append(f"{key}[{i}] is a {type(entry).__name__}, "
                            'not an object')
    return good


def _duplicates(ids: Iterable) -> List:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup


def check_coco_dict(data: dict, path: str) -> None:
    """Check that a COCO detection dictionary is complete and consistent.

    Every entry must carry the fields that mmdet's ``CocoDataset`` and
    pycocotools' ``COCOeval`` read (``COCOeval`` reads ``area`` and
    ``iscrowd`` of each ground-truth box at the end of the first
    evaluation, far too late to learn that they are missing); ids must be
    unique and references must resolve. Degenerate box *sizes* are legal
    here: what to do with them is the dataset's decision.

    A file without ``'annotations'`` (an image-info file, as COCO's test-dev)
    passes.

    Args:
        data (dict): Parsed annotation file.
        path (str): Its path, for the error message.

    Raises:
        DatasetCheckError: Listing every problem found (up to
            :data:`MAX_LISTED` of them).
    """
    problems: List[str] = []
    images = _entries(data, 'images', problems)
    categories = _entries(data, 'categories', problems)
    annotations = ([] if 'annotations' not in data else _entries(
        data, 'annotations', problems))

    img_ids = set()
    for i, img in enumerate(images):
        where = f"images[{i}] (id {img.get('id')!r})"
        if not _is_id(img.get('id')):
            problems.append(f"{where}: 'id' must be an integer")
        else:
            img_ids.add(img['id'])
        name = img.get('file_name')
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: 'file_name' must be a non-empty "
                            f'string, got {name!r}')
        for key in ('width', 'height'):
            if not _is_number(img.get(key)) or img[key] <= 0:
                problems.append(f"{where} '{name}': '{key}' must be a "
                                f'positive number, got {img.get(key)!r}')
    for dup in _duplicates(img['id'] for img in images
                           if _is_id(img.get('id'))):
        problems.append(f'image id {dup!r} is used more than once')

    cat_ids = set()
    for i, cat in enumerate(categories):
        where = f"categories[{i}] (id {cat.get('id')!r})"
        if not _is_id(cat.get('id')):
            problems.append(f"{where}: 'id' must be an integer")
        else:
            cat_ids.add(cat['id'])
        if not isinstance(cat.get('name'), str):
            problems.append(f"{where}: 'name' must be a string")
    for dup in _duplicates(cat['id'] for cat in categories
                           if _is_id(cat.get('id'))):
        problems.append(f'category id {dup!r} is used more than once')
    # Two categories of one name would both map to a class of that name and
    # shift the labels of every class after it.
    for dup in _duplicates(cat['name'] for cat in categories
                           if isinstance(cat.get('name'), str)):
        problems.append(f'category name {dup!r} is used more than once')

    for i, ann in enumerate(annotations):
        where = f"annotations[{i}] (id {ann.get('id')!r})"
        if not _is_id(ann.get('id')):
            problems.append(f"{where}: 'id' must be an integer")
        if not (_is_id(ann.get('image_id')) and ann['image_id'] in img_ids):
            problems.append(f"{where}: 'image_id' {ann.get('image_id')!r} "
                            "is not the id of an entry of 'images'")
        if not (_is_id(ann.get('category_id'))
                and ann['category_id'] in cat_ids):
            problems.append(
                f"{where}: 'category_id' {ann.get('category_id')!r} is not "
                "the id of an entry of 'categories'")
        bbox = ann.get('bbox')
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(_is_number(v) for v in bbox)):
            problems.append(f"{where}: 'bbox' must be [x, y, w, h] of four "
                            f'finite numbers, got {bbox!r}')
        if not _is_number(ann.get('area')):
            problems.append(f"{where}: 'area' must be a finite number, got "
                            f"{ann.get('area')!r}")
        if not (_is_number(ann.get('iscrowd')) and ann['iscrowd'] in (0, 1)):
            problems.append(f"{where}: 'iscrowd' must be 0 or 1, got "
                            f"{ann.get('iscrowd')!r}")
    for dup in _duplicates(ann['id'] for ann in annotations
                           if _is_id(ann.get('id'))):
        problems.append(f'annotation id {dup!r} is used more than once')

    if problems:
        raise DatasetCheckError(
            format_problems(
                f"annotation file '{path}' is not a valid COCO detection "
                f'file ({len(problems)} problems):', problems))


def _jpeg_is_complete(path: str) -> bool:
    """Whether a JPEG file ends with its end-of-image marker."""
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 2))
        return f.read(2) == _JPEG_EOI


def _decodes(path: str) -> bool:
    """Whether the image decoder of mmcv's ``LoadImageFromFile`` (OpenCV,
    its default backend) decodes the file."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return mmcv.imfrombytes(data, flag='color') is not None
    except Exception:  # cv2.error, or whatever a broken file provokes
        return False


def check_image_file(path: str,
                     width: Optional[float] = None,
                     height: Optional[float] = None,
                     full_decode: bool = False) -> Optional[str]:
    """Find why an image file cannot be used, cheaply.

    Without ``full_decode``, PIL identifies the file from its header and
    ``verify`` checks what it can without decoding (the chunk checksums of
    a PNG, nothing for a JPEG). A JPEG whose last two bytes are not the
    end-of-image marker (a truncated file, or one with trailing bytes) is
    then decoded in full by OpenCV, as ``LoadImageFromFile`` will: OpenCV
    returns nothing for a truncated JPEG, and mmcv would fail on it only
    when its turn comes in training. ``full_decode`` decodes every image.

    Args:
        path (str): Local path of the image.
        width (float, optional): Width the annotation file gives.
        height (float, optional): Height the annotation file gives.
        full_decode (bool): Decode every image. Defaults to False.

    Returns:
        str | None: What is wrong (without the path), or None if usable.
    """
    if not osp.isfile(path):
        return 'file not found' if not osp.exists(path) else 'not a file'
    if osp.getsize(path) == 0:
        return 'file is empty'
    try:
        with Image.open(path) as img:
            size, fmt = img.size, img.format  # from the header
            img.verify()
    except UnidentifiedImageError:
        return 'cannot be decoded: not an image file of a known format'
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated or corrupt data as OSError or SyntaxError.
        return f'cannot be decoded ({type(e).__name__}: {e})'
    if full_decode or (fmt == 'JPEG' and not _jpeg_is_complete(path)):
        if not _decodes(path):
            return ('cannot be decoded by OpenCV (as LoadImageFromFile '
                    'does): the data is truncated or corrupt')
    if width is not None and height is not None and \
            size != (width, height) and not (
                size[::-1] == (width, height) and _is_transposed(path)):
        return (f'image is {size[0]}x{size[1]} pixels but the annotation '
                f'file says {width}x{height}')
    return None


def _is_transposed(path: str) -> bool:
    """Whether the EXIF orientation of an image swaps its width and height
    (mmcv's OpenCV decoder applies it, so either size may be annotated)."""
    with Image.open(path) as img:
        return img.getexif().get(_EXIF_ORIENTATION, 1) in \
            _TRANSPOSING_ORIENTATIONS
