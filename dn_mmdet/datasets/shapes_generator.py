"""Generator of the embedded synthetic shapes detection data set (COCO format).

``tools/misc/make_shapes_dataset.py`` is its command line. Not imported by
``import dn_mmdet`` (training needs only ``ShapesDataset`` and the class
names): ``from dn_mmdet.datasets import shapes_generator``.

The project has to train, evaluate and test on a machine without COCO and
without network, so it embeds a small detection task of its own: coloured
geometric shapes (:data:`SHAPES_CLASSES`) on varied backgrounds (colour
gradients and smooth textures, with pixel noise).
The output is an ordinary COCO dataset (JPEG files plus ``instances_*.json``)
that pycocotools, ``CocoDataset`` and ``CocoMetric`` read unchanged, so the
whole mmdet data path is exercised exactly as with the real data set.

The colour of a shape is random and independent of its class, so a detector
has to learn the class from the outline. Every image is drawn from its own
random generator seeded by ``(seed, split, index)``: the output is the same
for a seed whatever the order or the number of processes that draw it.

Boxes are the tight box of the *visible* pixels of each shape (shapes drawn
later hide parts of earlier ones, and shapes may be cut by the image border),
in COCO ``[x, y, w, h]`` pixel-edge coordinates: a shape covering pixel
columns 10..19 gets ``x = 10, w = 10``.
"""

import json
import math
import os
import os.path as osp
import sys
from multiprocessing import Pool
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .shapes_dataset import SHAPES_CLASSES

__all__ = [
    'generate_shapes_dataset',
    'ensure_shapes_dataset',
    'shapes_layout',
    'render_shapes_image',
]

#: Bumped whenever the drawing changes, so that stale data is regenerated.
GENERATOR_VERSION = 2

STAMP_NAME = 'shapes_stamp.json'

_SPLIT_CODES = {'train': 0, 'val': 1}

# Drawing parameters. Sizes are the diameter of the circle circumscribing a
# shape, as a fraction of the shorter image side: a rotated shape then always
# fits in a ``size x size`` square, and its box side is 0.7..1.0 of ``size``.
# At the CPU configs' 128 px input the smallest shapes are ~13 px.
_SIZE_RANGE = (0.2, 0.7)
_EMPTY_IMAGE_PROB = 0.05
_MAX_OBJECTS = 4
_PLACEMENT_TRIES = 25
# An object may be cut by the image border, but keeps 75% of its area inside.
_MIN_INSIDE_FRACTION = 0.75
# Occlusion stays moderate: every object keeps 60% of its area visible, and
# no two boxes overlap by more than 35% of the smaller one (which also rules
# out a small shape hidden inside a bigger one).
_MIN_VISIBLE_FRACTION = 0.6
_MAX_BOX_OVERLAP = 0.35
# A shape's colour differs from the background under it by at least this
# (euclidean RGB distance), so that every object is actually visible.
_MIN_CONTRAST = 70.0
_JPEG_QUALITY = 90
# Backgrounds vary in colour and kind but stay calmer than the shapes: the
# data set has to be learnable from scratch in a 15-minute CPU run (README,
# "Model zoo", says what busier backgrounds cost).
_TEXTURE_PROB = 0.25  # smooth texture instead of a gradient
_TEXTURE_AMPLITUDE = 30.0  # +- per channel around the base colour


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
        for split in _SPLIT_CODES
    }


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------
def _unit_polygon(label: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K, 2) of a shape of circumradius 0.5 centred at the origin.

    ``rng`` draws the free shape parameters (star depth, cross arm width), so
    that instances of a class are not all identical.
    """
    name = SHAPES_CLASSES[label]
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == 'square':
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == 'triangle':
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == 'star':
        # Alternate outer and inner vertices of a five-pointed star.
        inner = rng.uniform(0.38, 0.5)
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if name == 'cross':
        # A plus sign whose arm ends touch the circumcircle.
        w = 0.5 * rng.uniform(0.28, 0.4)  # half arm width
        a = math.sqrt(0.25 - w * w)  # half arm length
        return np.array(
            [
                (w, a),
                (w, w),
                (a, w),
                (a, -w),
                (w, -w),
                (w, -a),
                (-w, -a),
                (-w, -w),
                (-a, -w),
                (-a, w),
                (-w, w),
                (-w, a),
            ]
        )
    raise ValueError(f'unknown shape label {label}')


def _polygon_area(poly: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(
        float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    )


def _rasterize(poly: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (H, W) mask of the pixels a polygon covers."""
    canvas = Image.new('L', (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in poly.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def _mask_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """Tight box ``(x1, y1, x2, y2)`` (exclusive ends) of a mask, or None."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection of two boxes over the area of the smaller one."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------
def _background(
    rng: np.random.Generator, width: int, height: int
) -> np.ndarray:
    """A float32 (H, W, 3) background: a linear gradient between two random
    colours at a random angle, or a smooth low-contrast colour texture."""
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    if rng.random() < _TEXTURE_PROB:  # upsampled low-resolution noise
        grid = c0 + rng.uniform(
            -_TEXTURE_AMPLITUDE,
            _TEXTURE_AMPLITUDE,
            (rng.integers(3, 9), rng.integers(3, 9), 3),
        )
        img = cv2.resize(
            grid.astype(np.float32),
            (width, height),
            interpolation=cv2.INTER_CUBIC,
        )
    else:
        c1 = rng.uniform(0, 255, 3).astype(np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = c0 + t[..., None] * (c1 - c0)
    return np.ascontiguousarray(img, dtype=np.float32)


def _shape_fill(
    rng: np.random.Generator,
    bg_colour: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Colours (P, 3) of the P pixels ``(xs, ys)`` of one shape: a random
    colour contrasting with the background under it, flat or with a linear
    shading (over a length ``scale``)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(colour - bg_colour) >= _MIN_CONTRAST:
            break
    else:  # keep the last try, pushed away from the background
        colour = np.where(bg_colour > 127, 0.0, 255.0).astype(np.float32)
    if rng.random() < 0.5:
        return np.broadcast_to(colour, (len(xs), 3))
    theta = rng.uniform(0, 2 * np.pi)
    t = (xs * np.cos(theta) + ys * np.sin(theta)) / scale
    return colour * (1.0 + rng.uniform(0.1, 0.3) * (t[:, None] - 0.5))


def _place_shape(
    rng: np.random.Generator, width: int, height: int, placed: List[dict]
) -> Optional[dict]:
    """Draw a random shape that obeys the occlusion rules, or None."""
    short = min(width, height)
    log_lo, log_hi = np.log(_SIZE_RANGE[0]), np.log(_SIZE_RANGE[1])
    for _ in range(_PLACEMENT_TRIES):
        label = int(rng.integers(len(SHAPES_CLASSES)))
        size = float(np.exp(rng.uniform(log_lo, log_hi))) * short
        angle = rng.uniform(0, 2 * np.pi)
        # Centres up to 15% of the size beyond the border-touching position.
        margin = 0.35 * size
        cx = rng.uniform(margin, width - margin)
        cy = rng.uniform(margin, height - margin)
        rot = np.array(
            [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        )
        poly = _unit_polygon(label, rng) @ rot.T * size + (cx, cy)
        mask = _rasterize(poly, width, height)
        area = int(mask.sum())
        if area < _MIN_INSIDE_FRACTION * _polygon_area(poly):
            continue
        box = _mask_box(mask)
        if any(_box_overlap(box, p['box']) > _MAX_BOX_OVERLAP for p in placed):
            continue
        if any(
            (p['visible'] & ~mask).sum() < _MIN_VISIBLE_FRACTION * p['area']
            for p in placed
        ):
            continue
        return dict(label=label, mask=mask, area=area, box=box, visible=mask)
    return None


def _segmentation(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons of the outer contours of a mask (pixel centres)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    # pycocotools needs at least three points a polygon.
    return [
        c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3
    ]


def render_shapes_image(
    seed: int, split: str, index: int, img_size: Tuple[int, int] = (200, 320)
) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image of the data set.

    Args:
        seed (int): Data set seed.
        split (str): ``'train'`` or ``'val'``.
        index (int): Index of the image in its split.
        img_size (tuple[int, int]): Inclusive range of the width and of the
            height, drawn independently. Defaults to (200, 320).

    Returns:
        tuple: ``img``, a uint8 (H, W, 3) RGB array, and a list of objects,
        each ``dict(category_id, bbox=[x, y, w, h], area, segmentation)``,
        in drawing order (later objects occlude earlier ones).
    """
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    width, height = (
        int(v) for v in rng.integers(img_size[0], img_size[1] + 1, size=2)
    )
    img = _background(rng, width, height)

    num_objects = (
        0
        if rng.random() < _EMPTY_IMAGE_PROB
        else int(rng.integers(1, _MAX_OBJECTS + 1))
    )
    placed = []
    for _ in range(num_objects):
        shape = _place_shape(rng, width, height, placed)
        if shape is None:
            continue
        for p in placed:
            p['visible'] = p['visible'] & ~shape['mask']
        ys, xs = np.nonzero(shape['mask'])
        bg_colour = img[ys, xs].mean(axis=0)
        img[ys, xs] = _shape_fill(
            rng,
            bg_colour,
            xs.astype(np.float32),
            ys.astype(np.float32),
            max(width, height),
        )
        placed.append(shape)

    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(
        0, 10
    )
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects = []
    for p in placed:
        x1, y1, x2, y2 = _mask_box(p['visible'])
        objects.append(
            dict(
                category_id=p['label'] + 1,
                bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                area=float(p['visible'].sum()),
                segmentation=_segmentation(p['visible']),
            )
        )
    return img, objects


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
    stamp_file = osp.join(out_dir, STAMP_NAME)
    try:
        with open(stamp_file) as f:
            if json.load(f) != stamp:
                return False
    except (OSError, ValueError):
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


def remove_generated_images(folder: str) -> None:
    """Removes the images the shapes generators write (``000001.jpg``:
    six digits) from ``folder`` (if it exists), and nothing else: a user's
    files are never deleted."""
    if not osp.isdir(folder):
        return
    for name in os.listdir(folder):
        if len(name) == 10 and name.endswith('.jpg') and name[:6].isdigit():
            os.remove(osp.join(folder, name))


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
    stamp_file = osp.join(out_dir, STAMP_NAME)
    if osp.exists(stamp_file):
        os.remove(stamp_file)
    for split in layout.values():
        remove_generated_images(osp.join(out_dir, split['img_dir']))
    generate_shapes_dataset(
        out_dir,
        num_train=num_train,
        num_val=num_val,
        seed=seed,
        img_size=img_size,
        coco_layout=coco_layout,
        workers=workers,
        progress=progress,
    )
    with open(stamp_file, 'w') as f:
        json.dump(stamp, f, indent=2)
    return True
