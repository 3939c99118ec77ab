"""Generator of the embedded shape-classification data set (stage 1 on
the CPU); ``tools/misc/make_shapes_cls_dataset.py`` is its command line.

The paper pre-trains its detector's backbone on ImageNet-100 (stage 1) before
training SSDLite on COCO (stage 2). The CPU stand-in for ImageNet-100 is this
data set: object-centred crops of images drawn by the shapes generator (the
one that draws the embedded detection data), one crop per shape, labelled
with the shape's class (circle, square, triangle, star, cross). Like ImageNet
for COCO, it teaches the backbone the objects the detector will look for, on
the same kind of backgrounds, in images the detector never sees: the source
images are drawn with seed ``1,000,000 + seed``, never used by the detection
data (its seeds are small).

A crop is a square around the shape's box, 1.2-1.6 times its longer side
(random context), shifted into the image where it overlaps the border (cut
where the image is smaller), resized to ``size x size`` and saved as JPEG.
Neighbouring shapes may show at the edges; the label is the centred one's.

Output (mmpretrain ``CustomDataset`` files, as the ImageNet-100 converter
writes)::

    <out>/train/000001.jpg ...       <out>/val/000001.jpg ...
    <out>/meta/train.txt             lines "train/000001.jpg 3"
    <out>/meta/val.txt
    <out>/meta/classes.txt           one class name a line, in label order
    <out>/shapes_cls_stamp.json      the parameters (written last)

The same seed gives the same files whatever the number of workers.
:func:`ensure_shapes_cls_dataset` leaves alone a folder that already holds
the data set of the same parameters, and never overwrites annotation files
it did not write without ``force``.
"""

import itertools
import os
import os.path as osp
import re
from multiprocessing import Pool
from typing import Callable, Dict, Iterator, List, Tuple

import cv2
import numpy as np
from PIL import Image

from .generated_folder import read_stamp, regenerate
from .shapes_dataset import SHAPES_CLASSES
from .shapes_render import render_shapes_image

__all__ = [
    'generate_shapes_cls_dataset',
    'ensure_shapes_cls_dataset',
    'crop_objects',
    'foreign_annotation_files',
]

#: Bumped whenever the crops change, so that stale data is regenerated.
GENERATOR_VERSION = 1
STAMP_NAME = 'shapes_cls_stamp.json'
#: Source images are drawn with this seed offset (see the module docstring).
SOURCE_SEED_OFFSET = 1_000_000
_CONTEXT_RANGE = (1.2, 1.6)
_JPEG_QUALITY = 90
_SPLITS = ('train', 'val')


def crop_objects(
    img: np.ndarray, objects: List[dict], rng: np.random.Generator, size: int
) -> List[Tuple[np.ndarray, int]]:
    """Object-centred square crops of one rendered image.

    Args:
        img (np.ndarray): uint8 (H, W, 3) image of ``render_shapes_image``.
        objects (list[dict]): Its objects (COCO ``bbox`` and
            ``category_id``).
        rng (np.random.Generator): Draws the context of each crop.
        size (int): Side of the output crops in pixels.

    Returns:
        list[tuple[np.ndarray, int]]: ``(crop, label)`` per object, the crop
        uint8 (size, size, 3), the label ``category_id - 1``.
    """
    height, width = img.shape[:2]
    crops = []
    for obj in objects:
        x, y, w, h = obj['bbox']
        side = max(w, h) * rng.uniform(*_CONTEXT_RANGE)
        side_x, side_y = min(side, width), min(side, height)
        x0 = np.clip(x + w / 2 - side_x / 2, 0, width - side_x)
        y0 = np.clip(y + h / 2 - side_y / 2, 0, height - side_y)
        x0, y0 = int(round(x0)), int(round(y0))
        x1 = min(width, x0 + max(1, int(round(side_x))))
        y1 = min(height, y0 + max(1, int(round(side_y))))
        patch = img[y0:y1, x0:x1]
        crop = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        crops.append((crop, obj['category_id'] - 1))
    return crops


def _render_crops(
    task: Tuple[int, str, int, int],
) -> List[Tuple[np.ndarray, int]]:
    """The crops of source image ``index`` of ``split``."""
    seed, split, index, size = task
    img, objects = render_shapes_image(seed + SOURCE_SEED_OFFSET, split, index)
    # The context draws use their own stream: the source image does not
    # depend on them.
    rng = np.random.default_rng(
        [seed + SOURCE_SEED_OFFSET, _SPLITS.index(split), index, 1]
    )
    return crop_objects(img, objects, rng, size)


def _crops_in_order(
    seed: int, split: str, size: int, mapper: Callable
) -> Iterator[Tuple[np.ndarray, int]]:
    """Crops of source images 0, 1, 2, ... of ``split``, in that order.

    ``mapper`` is ``map`` or a pool's ``map``; images are drawn in chunks so
    that a pool never draws far more than the crops taken.
    """
    chunk = 16
    for start in itertools.count(0, chunk):
        tasks = [(seed, split, i, size) for i in range(start, start + chunk)]
        for crops in mapper(_render_crops, tasks):
            yield from crops


def generate_shapes_cls_dataset(
    out_dir: str,
    num_train: int = 6000,
    num_val: int = 1000,
    seed: int = 0,
    size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> Dict[str, dict]:
    """Write the shape-classification data set (see the module docstring).

    Existing files of the same names are overwritten;
    :func:`ensure_shapes_cls_dataset` skips the work when the same data set
    is there and refuses to overwrite a user's annotation files.

    Args:
        out_dir (str): Root folder of the data set.
        num_train (int): Training crops. Defaults to 6000.
        num_val (int): Validation crops. Defaults to 1000.
        seed (int): Seed; the same seed gives the same files.
            Defaults to 0.
        size (int): Side of the square crops in pixels. Defaults to 64.
        workers (int): Processes drawing images; 0 or 1 draws in this
            process. The output does not depend on it. Defaults to 0.
        progress (bool): Print a line every 10% of a split. Defaults to
            False.

    Returns:
        dict: Per split, ``ann_file`` (absolute path), ``num_images`` and
        ``class_counts`` (images per class, in label order).
    """
    if size < 16:
        raise ValueError(f'size must be >= 16 pixels, got {size}')
    if num_train < 1 or num_val < 1:
        raise ValueError(
            'num_train and num_val must be >= 1, got '
            f'{num_train} and {num_val}'
        )
    meta_dir = osp.join(out_dir, 'meta')
    os.makedirs(meta_dir, exist_ok=True)
    with open(osp.join(meta_dir, 'classes.txt'), 'w') as f:
        f.write(''.join(f'{name}\n' for name in SHAPES_CLASSES))

    pool = Pool(workers) if workers > 1 else None
    try:
        return _write_splits(
            out_dir,
            dict(train=num_train, val=num_val),
            seed,
            size,
            pool.map if pool else map,
            progress,
        )
    finally:
        if pool is not None:
            pool.close()


def _write_splits(
    out_dir: str,
    nums: Dict[str, int],
    seed: int,
    size: int,
    mapper: Callable,
    progress: bool,
) -> Dict[str, dict]:
    """Write the crops and annotation file of each split."""
    meta_dir = osp.join(out_dir, 'meta')
    summary = {}
    for split, num in nums.items():
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        lines, counts = [], [0] * len(SHAPES_CLASSES)
        step = max(1, num // 10)
        crops = _crops_in_order(seed, split, size, mapper)
        for i, (crop, label) in enumerate(crops):
            name = f'{split}/{i + 1:06d}.jpg'
            Image.fromarray(crop).save(
                osp.join(out_dir, name), quality=_JPEG_QUALITY
            )
            lines.append(f'{name} {label}\n')
            counts[label] += 1
            if progress and ((i + 1) % step == 0 or i + 1 == num):
                print(f'shapes_cls: {split} {i + 1}/{num} images', flush=True)
            if i + 1 == num:
                break
        ann_file = osp.join(meta_dir, f'{split}.txt')
        with open(ann_file, 'w') as f:
            f.write(''.join(lines))
        summary[split] = dict(
            ann_file=osp.abspath(ann_file),
            num_images=len(lines),
            class_counts=counts,
        )
    return summary


#: What this module writes in ``meta/``: the class list, and per split
#: lines ``<split>/<6 digits>.jpg <label>``.
_CLASSES_TEXT = ''.join(f'{name}\n' for name in SHAPES_CLASSES)
_SPLIT_LINE = {
    split: re.compile(rf'{split}/\d{{6}}\.jpg \d+\n?') for split in _SPLITS
}


def _written_by_us(path: str, name: str) -> bool:
    """Whether ``meta/<name>`` (a file) holds what this module writes there
    (or nothing: a write cut short)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    if name == 'classes.txt':
        return text in ('', _CLASSES_TEXT)
    pattern = _SPLIT_LINE[name[: -len('.txt')]]
    return all(pattern.fullmatch(line) for line in text.splitlines(True))


def foreign_annotation_files(out_dir: str) -> List[str]:
    """The files of ``<out_dir>/meta`` this module would write
    (``classes.txt``, ``train.txt``, ``val.txt``) that exist and hold
    something else: a user's annotations, never to be overwritten without
    ``force``."""
    foreign = []
    for name in ('classes.txt',) + tuple(f'{s}.txt' for s in _SPLITS):
        path = osp.join(out_dir, 'meta', name)
        if osp.lexists(path) and not (
            osp.isfile(path) and _written_by_us(path, name)
        ):
            foreign.append(path)
    return foreign


def _stamp(num_train: int, num_val: int, seed: int, size: int) -> dict:
    return dict(
        generator_version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        seed=seed,
        size=size,
    )


def ensure_shapes_cls_dataset(
    out_dir: str,
    num_train: int = 6000,
    num_val: int = 1000,
    seed: int = 0,
    size: int = 64,
    force: bool = False,
    workers: int = 0,
    progress: bool = False,
) -> bool:
    """Generate the data set unless ``out_dir`` already holds the same one.

    The stamp is written last, so an interrupted generation is redone; crops
    left over from a bigger earlier data set are removed with the stamp's
    parameters changing. Annotation files of the same names that this
    module did not write (:func:`foreign_annotation_files`) are never
    overwritten without ``force``. Arguments as
    :func:`generate_shapes_cls_dataset`, plus ``force`` (regenerate even if
    the stamp matches, and overwrite any annotation file).

    Returns:
        bool: True if the data set was generated, False if up to date.

    Raises:
        FileExistsError: naming the annotation files in the way (nothing
            is written then).
    """
    stamp = _stamp(num_train, num_val, seed, size)
    if not force and read_stamp(out_dir, STAMP_NAME) == stamp:
        return False
    foreign = [] if force else foreign_annotation_files(out_dir)
    if foreign:
        raise FileExistsError(
            f'refusing to overwrite {", ".join(map(repr, foreign))}: not '
            'written by the shapes classification generator (force=True / '
            '--force overwrites)'
        )
    regenerate(
        out_dir,
        STAMP_NAME,
        stamp,
        _SPLITS,
        lambda: generate_shapes_cls_dataset(
            out_dir,
            num_train=num_train,
            num_val=num_val,
            seed=seed,
            size=size,
            workers=workers,
            progress=progress,
        ),
    )
    return True
