"""Drawing of the embedded synthetic shapes detection data: one image and
its objects (:func:`render_shapes_image`). :mod:`.shapes_generator` writes
the images as a COCO data set; :mod:`.shapes_cls_generator` crops them for
the classification data.

Coloured geometric shapes (:data:`SHAPES_CLASSES`) on varied backgrounds
(colour gradients and smooth textures, with pixel noise). The colour of a
shape is random and independent of its class, so a detector has to learn
the class from the outline. Every image is drawn from its own random
generator seeded by ``(seed, split, index)``: the output is the same for a
seed whatever the order or the number of processes that draw it.

Boxes are the tight box of the *visible* pixels of each shape (shapes drawn
later hide parts of earlier ones, and shapes may be cut by the image border),
in COCO ``[x, y, w, h]`` pixel-edge coordinates: a shape covering pixel
columns 10..19 gets ``x = 10, w = 10``.
"""

import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .shapes_dataset import SHAPES_CLASSES

__all__ = ['GENERATOR_VERSION', 'SPLIT_CODES', 'render_shapes_image']

#: Bumped whenever the drawing changes, so that stale data is regenerated.
GENERATOR_VERSION = 2

#: The splits, and the code of each in an image's seed.
SPLIT_CODES = {'train': 0, 'val': 1}

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
# Backgrounds vary in colour and kind but stay calmer than the shapes: the
# data set has to be learnable from scratch in a 15-minute CPU run (README,
# "Model zoo", says what busier backgrounds cost).
_TEXTURE_PROB = 0.25  # smooth texture instead of a gradient
_TEXTURE_AMPLITUDE = 30.0  # +- per channel around the base colour


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
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
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
