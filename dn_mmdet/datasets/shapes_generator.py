"""Generator of the embedded synthetic shapes detection data set (COCO format).

``tools/misc/make_shapes_dataset.py`` is its command line. Not imported by
``import dn_mmdet`` (training needs only ``ShapesDataset`` and the class
names): ``from dn_mmdet.datasets import shapes_generator``.

The project has to train, evaluate and test on a machine without COCO and
without network, so it embeds a small detection task of its own: coloured
geometric shapes (:data:`SHAPES_CLASSES`) on varied backgrounds, drawn by
:mod:`.shapes_render` (:func:`render_shapes_image`, which says how).
The output is an ordinary COCO dataset (JPEG files plus ``instances_*.json``)
that pycocotools, ``CocoDataset`` and ``CocoMetric`` read unchanged, so the
whole mmdet data path is exercised exactly as with the real data set.
"""

import json
import os
import os.path as osp
import sys
from multiprocessing import Pool
from typing import Callable, Dict, List, Tuple

from PIL import Image

from .generated_folder import (
    read_stamp,
    regenerate,
    remove_generated_images,  # noqa: F401  (its home before)
)
from .shapes_dataset import SHAPES_CLASSES
from .shapes_render import GENERATOR_VERSION, SPLIT_CODES, render_shapes_image

__all__ = [
    'generate_shapes_dataset',
    'ensure_shapes_dataset',
    'shapes_layout',
    'render_shapes_image',
]

STAMP_NAME = 'shapes_stamp.json'

_JPEG_QUALITY = 90


def shapes_layout(coco_layout: bool = False) -> Dict[str, Dict[str, str]]:
    """Relative paths of the annotation file and image folder of each split.

    Args:
        coco_layout (bool): Use mmdet's ``data/coco`` names
            (``annotations/instances_train2017.json``, ``train2017/``) instead
            of the short ones (``annotations/instances_train.json``,
            ``train/``). Defaults to False.

    Returns:
        dict: ``{split: dict(ann_file=..., img_dir=...)}`` for ``'train'`` and
        ``'val'``; ``img_dir`` ends with ``/`` as mmdet's ``data_prefix``.
    """
    suffix = '2017' if coco_layout else ''
    return {
        split: dict(
            ann_file=f'annotations/instances_{split}{suffix}.json',
            img_dir=f'{split}{suffix}/',
        )
        for split in SPLIT_CODES
    }


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def _write_image(task: Tuple[int, str, int, Tuple[int, int], str]) -> dict:
    """Draw and save one image; return its COCO image entry and objects."""
    seed, split, index, img_size, img_dir = task
    img, objects = render_shapes_image(seed, split, index, img_size)
    file_name = f'{index + 1:06d}.jpg'
    Image.fromarray(img).save(
        osp.join(img_dir, file_name), quality=_JPEG_QUALITY
    )
    height, width = img.shape[:2]
    return dict(
        image=dict(
            id=index + 1, file_name=file_name, width=width, height=height
        ),
        objects=objects,
    )


def _progress_reporter(total: int) -> Callable[[int], None]:
    """A callback showing how many of ``total`` images are done: mmengine's
    progress bar on a terminal, a line every 10% in a log file (where the
    bar's carriage returns would make one enormous line)."""
    if sys.stdout.isatty():
        from mmengine.utils import ProgressBar

        bar = ProgressBar(total)

        def report(done: int) -> None:
            bar.update()
            if done == total:
                bar.file.write('\n')

        return report

    step = max(1, total // 10)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            print(f'shapes: {done}/{total} images', flush=True)

    return report


def _coco_dict(split: str, seed: int, results: List[dict]) -> dict:
    """Assemble the COCO annotation dictionary of one split."""
    images, annotations = [], []
    for result in results:
        images.append(result['image'])
        for obj in result['objects']:
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=result['image']['id'],
                    iscrowd=0,
                    **obj,
                )
            )
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    info = dict(
        description=f'dn_mmdet synthetic shapes, {split} split',
        version=str(GENERATOR_VERSION),
        seed=seed,
    )
    return dict(
        info=info,
        licenses=[],
        images=images,
        annotations=annotations,
        categories=categories,
    )


def generate_shapes_dataset(
    out_dir: str,
    num_train: int = 2000,
    num_val: int = 300,
    seed: int = 0,
    img_size: Tuple[int, int] = (200, 320),
    coco_layout: bool = False,
    workers: int = 0,
    progress: bool = False,
) -> Dict[str, dict]:
    """Write the synthetic shapes data set in COCO format.

    Existing files of the same names are overwritten; other files in
    ``out_dir`` are left alone. Use :func:`ensure_shapes_dataset` to skip the
    work when an identical data set is already there.

    Args:
        out_dir (str): Root folder of the data set.
        num_train (int): Number of training images. Defaults to 2000.
        num_val (int): Number of validation images. Defaults to 300.
        seed (int): Seed; the same seed gives byte-identical annotation
            files and identical pixels (given the same numpy, Pillow and
            OpenCV). Defaults to 0.
        img_size (tuple[int, int]): Inclusive range of image widths and
            heights in pixels. Defaults to (200, 320).
        coco_layout (bool): Use mmdet's ``data/coco`` file names, see
            :func:`shapes_layout`. Defaults to False.
        workers (int): Processes drawing images; 0 or 1 draws in this
            process. The output does not depend on it. Defaults to 0.
        progress (bool): Show a progress bar. Defaults to False.

    Returns:
        dict: :func:`shapes_layout` with absolute paths, plus the number of
        images and annotations of each split.
    """
    if img_size[0] < 32 or img_size[1] < img_size[0]:
        raise ValueError(
            f'img_size must be (min, max) with 32 <= min <= max, '
            f'got {img_size}'
        )
    layout = shapes_layout(coco_layout)
    splits = dict(train=num_train, val=num_val)
    tasks = []
    for split, num in splits.items():
        img_dir = osp.join(out_dir, layout[split]['img_dir'])
        os.makedirs(img_dir, exist_ok=True)
        tasks += [
            (seed, split, i, tuple(img_size), img_dir) for i in range(num)
        ]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)

    report = _progress_reporter(len(tasks)) if progress else None
    results = []
    if workers > 1:
        with Pool(workers) as pool:
            # imap keeps the order of the tasks, so the output is identical.
            for result in pool.imap(_write_image, tasks, chunksize=16):
                results.append(result)
                if report is not None:
                    report(len(results))
    else:
        for task in tasks:
            results.append(_write_image(task))
            if report is not None:
                report(len(results))

    summary = {}
    start = 0
    for split, num in splits.items():
        coco = _coco_dict(split, seed, results[start : start + num])
        start += num
        ann_file = osp.join(out_dir, layout[split]['ann_file'])
        with open(ann_file, 'w') as f:
            # dumps, not dump: only the one-shot encoder is the fast C one.
            f.write(json.dumps(coco, separators=(',', ':')))
        summary[split] = dict(
            ann_file=osp.abspath(ann_file),
            img_dir=osp.abspath(osp.join(out_dir, layout[split]['img_dir'])),
            num_images=len(coco['images']),
            num_annotations=len(coco['annotations']),
        )
    return summary


def _stamp(
    num_train: int,
    num_val: int,
    seed: int,
    img_size: Tuple[int, int],
    coco_layout: bool,
) -> dict:
    return dict(
        generator_version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        seed=seed,
        img_size=list(img_size),
        coco_layout=coco_layout,
    )


def _is_complete(out_dir: str, stamp: dict) -> bool:
    """Whether ``out_dir`` holds the data set described by ``stamp``."""
    if read_stamp(out_dir, STAMP_NAME) != stamp:
        return False
    layout = shapes_layout(stamp['coco_layout'])
    for split, num in (
        ('train', stamp['num_train']),
        ('val', stamp['num_val']),
    ):
        if not osp.isfile(osp.join(out_dir, layout[split]['ann_file'])):
            return False
        img_dir = osp.join(out_dir, layout[split]['img_dir'])
        # Cheap completeness test: the last image of the split exists.
        if num and not osp.isfile(osp.join(img_dir, f'{num:06d}.jpg')):
            return False
    return True


def _written_by_us(ann_file: str) -> bool:
    """Whether an annotation file was written by this module (it starts with
    our ``info``; reading the head only keeps this cheap for huge files)."""
    prefix = '{"info":{"description":"dn_mmdet synthetic shapes'
    with open(ann_file, 'rb') as f:
        return f.read(len(prefix)) == prefix.encode()


def ensure_shapes_dataset(
    out_dir: str,
    num_train: int = 2000,
    num_val: int = 300,
    seed: int = 0,
    img_size: Tuple[int, int] = (200, 320),
    coco_layout: bool = False,
    force: bool = False,
    workers: int = 0,
    progress: bool = False,
) -> bool:
    """Generate the data set unless ``out_dir`` already holds the same one.

    A stamp file (``shapes_stamp.json``) records the parameters; it is
    written last, so an interrupted generation is redone on the next call.
    Images left over from a bigger earlier data set in the same folders are
    removed, so that the folders hold exactly what the annotations list.
    An annotation file of the same name that this module did not write is
    never overwritten without ``force``.

    Args:
        out_dir (str): Root folder of the data set.
        num_train, num_val, seed, img_size, coco_layout, workers, progress:
            See :func:`generate_shapes_dataset`.
        force (bool): Regenerate even if the stamp matches. Defaults to False.

    Returns:
        bool: True if the data set was generated, False if it was up to date.
    """
    stamp = _stamp(num_train, num_val, seed, img_size, coco_layout)
    if not force and _is_complete(out_dir, stamp):
        return False
    layout = shapes_layout(coco_layout)
    for split in layout.values():
        ann_file = osp.join(out_dir, split['ann_file'])
        if not force and osp.isfile(ann_file) and not _written_by_us(ann_file):
            # E.g. --coco-layout pointed at a real data/coco.
            raise FileExistsError(
                f"'{ann_file}' exists and is not a shapes annotation file; "
                'refusing to overwrite it (force=True / --force does)'
            )
    regenerate(
        out_dir,
        STAMP_NAME,
        stamp,
        [split['img_dir'] for split in layout.values()],
        lambda: generate_shapes_dataset(
            out_dir,
            num_train=num_train,
            num_val=num_val,
            seed=seed,
            img_size=img_size,
            coco_layout=coco_layout,
            workers=workers,
            progress=progress,
        ),
    )
    return True
