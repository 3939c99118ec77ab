"""The folder of a generated data set: a stamp file recording the
parameters it was written with, and the numbered images a generator writes.

Both shapes generators (:mod:`.shapes_generator`,
:mod:`.shapes_cls_generator`) keep their folders this way: their
``ensure_*`` functions skip the work when the stamp matches, and otherwise
:func:`regenerate` the data set so that an interruption at any point is
redone by the next call and no image of an earlier, bigger data set stays
behind. Which annotation files a generator may overwrite is each
generator's own check, made before :func:`regenerate`.
"""

import json
import os
import os.path as osp
from typing import Callable, Optional, Sequence

__all__ = ['read_stamp', 'regenerate', 'remove_generated_images']


def read_stamp(out_dir: str, stamp_name: str) -> Optional[dict]:
    """The parameters recorded in ``<out_dir>/<stamp_name>``.

    Args:
        out_dir (str): Root folder of the data set.
        stamp_name (str): File name of the stamp (e.g. ``shapes_stamp.json``).

    Returns:
        dict or None: The stamp, or None if it is missing or cannot be read
        (a damaged stamp means: regenerate).
    """
    try:
        with open(osp.join(out_dir, stamp_name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove_generated_images(folder: str) -> None:
    """Removes the images the shapes generators write (``000001.jpg``:
    six digits) from ``folder`` (if it exists), and nothing else: a user's
    files are never deleted."""
    if not osp.isdir(folder):
        return
    for name in os.listdir(folder):
        if len(name) == 10 and name.endswith('.jpg') and name[:6].isdigit():
            os.remove(osp.join(folder, name))


def regenerate(
    out_dir: str,
    stamp_name: str,
    stamp: dict,
    image_dirs: Sequence[str],
    generate: Callable[[], object],
) -> None:
    """Write a data set again, stamp last.

    The old stamp is removed first and the new one written only after
    ``generate`` returns, so a run cut short leaves no stamp and is redone;
    the generated images of ``image_dirs`` are removed before ``generate``
    writes, so the folders hold exactly what the new annotations list.

    Args:
        out_dir (str): Root folder of the data set.
        stamp_name (str): File name of the stamp in ``out_dir``.
        stamp (dict): The parameters to record (JSON-serialisable).
        image_dirs (Sequence[str]): Image folders relative to ``out_dir``.
        generate (Callable[[], object]): Writes the data set.
    """
    stamp_file = osp.join(out_dir, stamp_name)
    if osp.exists(stamp_file):
        os.remove(stamp_file)
    for image_dir in image_dirs:
        remove_generated_images(osp.join(out_dir, image_dir))
    generate()
    with open(stamp_file, 'w') as f:
        json.dump(stamp, f, indent=2)
