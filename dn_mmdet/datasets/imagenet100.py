"""Build the DN paper's ImageNet-100 split from an ImageNet-1k tree
(``tools/dataset_converters/imagenet100.py`` is its command line).

The paper (Sec. 4, footnote 1): "We randomly select 100 classes in the
ImageNet dataset called ImageNet-100, where twenty percent of the selected
data is used as the validation set. And the original validation set is used
as the test set." It does not publish its classes, so the converter either
draws 100 of the training folders with a seed or reads a list
(``tools/dataset_converters/imagenet100_cmc.txt`` is CMC's widely used
list).
Within each class, the training images (sorted by name) are shuffled with a
generator seeded by ``(seed, wnid)`` and the first ``int(0.8 * n)`` kept for
training, as DenseNAS (the paper's code base) keeps ``int(0.8 * n)``; the
rest are the validation split. The official validation images of the chosen
classes are the test split.

The ImageNet root must hold ``train/<wnid>/*.JPEG`` and ``val/``, either in
class folders (``val/<wnid>/*.JPEG``) or flat (``val/*.JPEG``) with the
labels given by ``--val-labels``: Kaggle's ``LOC_val_solution.csv``, or the
devkit's ``ILSVRC2012_validation_ground_truth.txt`` (its ``meta.mat``, read
with mat4py, must sit beside it or be given).

Writes, without copying an image (paths are relative to the ImageNet root,
reached through the link ``<out>/images``)::

    <out>/classes.txt        the wnids, label i on line i (sorted)
    <out>/train.txt          "train/n01440764/n01440764_10026.JPEG 0" lines
    <out>/val.txt            the held-out 20% of the training images
    <out>/test.txt           "val/[n01440764/]ILSVRC2012_val_00000293.JPEG 0"
    <out>/images -> <ImageNet root>

These are mmpretrain ``CustomDataset`` annotation files; the ImageNet-100
configs read them with ``data_root='data/imagenet100/'``. A malformed tree
(a missing folder, a class folder without images, a label file that does
not match the images, an image whose name would not fit on one annotation
line) is refused with an error naming the folder or file, and annotation
files of the same names that the converter did not write are not
overwritten without ``force``.
"""

import csv
import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
WNID_PATTERN = re.compile(r'^n\d{8}$')
VAL_NAME_PATTERN = re.compile(r'^ILSVRC2012_val_(\d{8})\.JPEG$')


class ImageNetTreeError(ValueError):
    """The ImageNet tree, or a file describing it, is not as expected."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_listable(folder: str, name: str) -> None:
    """Raises unless ``name`` can be written as the file name of one
    annotation line (a line break would make it two lines, naming no file;
    a name that is not UTF-8 cannot be written)."""
    path = osp.join(folder, name)
    if len((name + '.').splitlines()) > 1:
        raise ImageNetTreeError(
            f'{path!r}: the file name has a line break, so it cannot be one '
            'line of an annotation file; rename the file (or move it out of '
            'the tree)'
        )
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        raise ImageNetTreeError(
            f'{path!r}: the file name is not valid UTF-8 and cannot be '
            'written to an annotation file; rename the file'
        ) from None


def _images_in(folder: str) -> List[str]:
    """Sorted image file names in ``folder``.

    Raises:
        ImageNetTreeError: An image whose name cannot be an annotation
            line's (see :func:`_check_listable`).
    """
    names = sorted(
        n
        for n in os.listdir(folder)
        if _is_image(n) and osp.isfile(osp.join(folder, n))
    )
    for name in names:
        _check_listable(folder, name)
    return names


def find_train_classes(root: str) -> List[str]:
    """The sorted wnids of ``<root>/train``'s class folders.

    Raises:
        ImageNetTreeError: No ``train`` folder, or an entry of it that is not
            a wnid-named folder.
    """
    train_dir = osp.join(root, 'train')
    if not osp.isdir(train_dir):
        raise ImageNetTreeError(
            f'{train_dir}: not a folder; an ImageNet root holds train/<wnid>/ '
            'class folders and val/'
        )
    wnids = []
    for name in sorted(os.listdir(train_dir)):
        path = osp.join(train_dir, name)
        if not (osp.isdir(path) and WNID_PATTERN.match(name)):
            raise ImageNetTreeError(
                f'{path}: expected only class folders named by wnid (e.g. '
                'n01440764) in train/'
            )
        wnids.append(name)
    if not wnids:
        raise ImageNetTreeError(f'{train_dir}: no class folders')
    return wnids


def read_class_list(path: str, available: Sequence[str]) -> List[str]:
    """The wnids of a class list file (one a line, '#' starts a comment).

    Raises:
        ImageNetTreeError: A line that is not a wnid, a repeated wnid, or a
            wnid without a training folder (named with file and line).
    """
    if not osp.isfile(path):
        raise ImageNetTreeError(f'{path}: class list file does not exist')
    known = set(available)
    wnids: List[str] = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            wnid = line.split('#', 1)[0].strip()
            if not wnid:
                continue
            where = f'{path}:{lineno}'
            if not WNID_PATTERN.match(wnid):
                raise ImageNetTreeError(f'{where}: {wnid!r} is not a wnid')
            if wnid in wnids:
                raise ImageNetTreeError(f'{where}: {wnid} is listed twice')
            if wnid not in known:
                raise ImageNetTreeError(
                    f'{where}: {wnid} has no folder in the training set'
                )
            wnids.append(wnid)
    if not wnids:
        raise ImageNetTreeError(f'{path}: lists no class')
    return wnids


def draw_classes(
    available: Sequence[str], num_classes: int, seed: int
) -> List[str]:
    """``num_classes`` wnids drawn without replacement from ``available``
    (sorted first, so the draw depends only on the seed and the set)."""
    if not 1 <= num_classes <= len(available):
        raise ImageNetTreeError(
            f'cannot draw {num_classes} classes from the {len(available)} '
            'training folders'
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(available), size=num_classes, replace=False)
    return [sorted(available)[i] for i in picked]


def split_class(
    files: Sequence[str], wnid: str, seed: int, val_fraction: float
) -> Tuple[List[str], List[str]]:
    """Shuffle one class's training files (seeded by ``(seed, wnid)``) and
    split them: the first ``int((1 - val_fraction) * n)`` are for training,
    the rest for validation. Both lists are returned sorted."""
    order = np.random.default_rng([seed, int(wnid[1:])]).permutation(
        len(files)
    )
    num_train = int((1 - val_fraction) * len(files))
    train = sorted(files[i] for i in order[:num_train])
    val = sorted(files[i] for i in order[num_train:])
    return train, val


def _read_loc_solution(path: str) -> Dict[str, str]:
    """``{file name: wnid}`` from Kaggle's ``LOC_val_solution.csv``."""
    labels = {}
    with open(path, newline='') as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ['ImageId', 'PredictionString']:
            raise ImageNetTreeError(
                f'{path}:1: expected the header "ImageId,PredictionString" '
                f'of LOC_val_solution.csv, got {header}'
            )
        for lineno, row in enumerate(reader, start=2):
            wnid = row[1].split()[0] if len(row) == 2 and row[1] else ''
            if not WNID_PATTERN.match(wnid):
                raise ImageNetTreeError(
                    f'{path}:{lineno}: expected "<ImageId>,<wnid> <box> ...", '
                    f'got {",".join(row)!r}'
                )
            labels[f'{row[0]}.JPEG'] = wnid
    return labels


def _read_devkit_ids(meta_path: str) -> Dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` from the devkit's ``meta.mat``."""
    if not osp.isfile(meta_path):
        raise ImageNetTreeError(
            f"{meta_path}: the devkit's meta.mat does not exist (it maps "
            'the ground truth IDs to wnids; give it with --devkit-meta)'
        )
    try:
        import mat4py  # installed with mmpretrain

        synsets = mat4py.loadmat(meta_path)['synsets']
        ids, wnids = synsets['ILSVRC2012_ID'], synsets['WNID']
    except Exception as err:  # mat4py raises its own types
        raise ImageNetTreeError(
            f"{meta_path}: cannot read the synsets of the devkit's meta.mat "
            f'({type(err).__name__}: {err})'
        ) from err
    return {int(i): str(w) for i, w in zip(ids, wnids)}


def _read_devkit_ground_truth(
    path: str, meta_path: Optional[str]
) -> Dict[str, str]:
    """``{file name: wnid}`` from ``ILSVRC2012_validation_ground_truth.txt``
    (line i is the ILSVRC2012_ID of ``ILSVRC2012_val_<i>.JPEG``)."""
    id_to_wnid = _read_devkit_ids(
        meta_path or osp.join(osp.dirname(path), 'meta.mat')
    )
    labels = {}
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text.isdigit() or int(text) not in id_to_wnid:
                raise ImageNetTreeError(
                    f'{path}:{lineno}: expected an ILSVRC2012_ID of '
                    f'meta.mat, got {text!r}'
                )
            labels[f'ILSVRC2012_val_{lineno:08d}.JPEG'] = id_to_wnid[int(text)]
    return labels


def read_val_labels(
    path: str, meta_path: Optional[str] = None
) -> Dict[str, str]:
    """``{val file name: wnid}`` from a ``LOC_val_solution.csv`` or the
    devkit's ``ILSVRC2012_validation_ground_truth.txt``."""
    if not osp.isfile(path):
        raise ImageNetTreeError(
            f'{path}: validation label file does not exist'
        )
    if path.endswith('.csv'):
        return _read_loc_solution(path)
    if path.endswith('.txt'):
        return _read_devkit_ground_truth(path, meta_path)
    raise ImageNetTreeError(
        f'{path}: unknown label file; expected LOC_val_solution.csv or '
        'ILSVRC2012_validation_ground_truth.txt'
    )


def collect_test(
    root: str,
    wnids: Sequence[str],
    val_labels: Optional[str] = None,
    devkit_meta: Optional[str] = None,
) -> Dict[str, List[str]]:
    """The official validation images of ``wnids``: ``{wnid: [paths
    relative to root]}``.

    Raises:
        ImageNetTreeError: No ``val`` folder; class folders in it but one of
            ``wnids`` missing; a flat folder without ``val_labels``, or one
            whose images and labels do not match.
    """
    val_dir = osp.join(root, 'val')
    if not osp.isdir(val_dir):
        raise ImageNetTreeError(f'{val_dir}: not a folder')
    entries = os.listdir(val_dir)
    folders = {e for e in entries if osp.isdir(osp.join(val_dir, e))}
    images = sorted(e for e in entries if _is_image(e))
    for name in images:
        _check_listable(val_dir, name)
    if folders and images:
        raise ImageNetTreeError(
            f'{val_dir}: holds both class folders and images (e.g. '
            f'{images[0]}); expected one or the other'
        )
    test: Dict[str, List[str]] = {}
    if folders:
        for wnid in wnids:
            folder = osp.join(val_dir, wnid)
            if wnid not in folders:
                raise ImageNetTreeError(
                    f'{folder}: missing (val/ has class '
                    'folders, but not this class)'
                )
            test[wnid] = [f'val/{wnid}/{n}' for n in _images_in(folder)]
    else:
        if not images:
            raise ImageNetTreeError(
                f'{val_dir}: no images and no class folders'
            )
        if val_labels is None:
            raise ImageNetTreeError(
                f'{val_dir}: flat ({len(images)} images, no class folders); '
                'give their labels with --val-labels LOC_val_solution.csv or '
                '--val-labels ILSVRC2012_validation_ground_truth.txt'
            )
        labels = read_val_labels(val_labels, devkit_meta)
        unlabelled = [n for n in images if n not in labels]
        if unlabelled:
            raise ImageNetTreeError(
                f'{val_labels}: has no label for {len(unlabelled)} image(s) '
                f'of {val_dir}, e.g. {unlabelled[0]}'
            )
        present = set(images)
        chosen = set(wnids)
        for name, wnid in sorted(labels.items()):
            if wnid in chosen and name not in present:
                raise ImageNetTreeError(
                    f'{osp.join(val_dir, name)}: labelled {wnid} in '
                    f'{val_labels}, but the file does not exist'
                )
        test = {wnid: [] for wnid in wnids}
        for name in images:
            if labels[name] in chosen:
                test[labels[name]].append(f'val/{name}')
    for wnid, files in test.items():
        if not files:
            raise ImageNetTreeError(f'{val_dir}: no image of class {wnid}')
    return test


def build_imagenet100(
    root: str,
    out_dir: str,
    classes_file: Optional[str] = None,
    num_classes: int = 100,
    seed: int = 0,
    val_fraction: float = 0.2,
    val_labels: Optional[str] = None,
    devkit_meta: Optional[str] = None,
    force: bool = False,
) -> Dict[str, object]:
    """Write the ImageNet-100 annotation files (see the module docstring).

    Nothing is written when the tree or a label file is malformed, or when
    ``out_dir`` holds annotation files of the same names that this
    function did not write (:func:`foreign_annotation_files`; ``force``
    overwrites them).

    Args:
        root (str): ImageNet-1k root (``train/``, ``val/``).
        out_dir (str): Output folder.
        classes_file (str, optional): Class list; None draws
            ``num_classes`` classes with ``seed``.
        num_classes (int): Classes to draw without a list. Defaults to 100.
        seed (int): Seed of the class draw and of the train/val split.
            Defaults to 0.
        val_fraction (float): Share of each class's training images held out
            for validation. Defaults to 0.2 (the paper's).
        val_labels (str, optional): Labels of a flat ``val/``.
        devkit_meta (str, optional): The devkit's ``meta.mat`` (defaults to
            the one beside a ground truth ``val_labels`` file).
        force (bool): Overwrite annotation files this function did not
            write. Defaults to False.

    Returns:
        dict: ``classes`` (the wnids in label order) and, per split
        (``train``, ``val``, ``test``), ``{wnid: number of images}``.

    Raises:
        ImageNetTreeError: A malformed tree or label file, named.
        FileExistsError: Annotation files in the way, named.
    """
    if not 0 < val_fraction < 1:
        raise ImageNetTreeError(
            f'val_fraction must be in (0, 1), got {val_fraction}'
        )
    if not osp.isdir(root):
        raise ImageNetTreeError(f'{root}: ImageNet root is not a folder')
    available = find_train_classes(root)
    if classes_file is not None:
        wnids = read_class_list(classes_file, available)
    else:
        wnids = draw_classes(available, num_classes, seed)
    wnids = sorted(wnids)

    splits: Dict[str, Dict[str, List[str]]] = dict(train={}, val={})
    for wnid in wnids:
        folder = osp.join(root, 'train', wnid)
        files = _images_in(folder)
        if len(files) < 2:
            raise ImageNetTreeError(
                f'{folder}: {len(files)} image(s); a class needs at least 2 '
                'to be split into train and val'
            )
        train, val = split_class(files, wnid, seed, val_fraction)
        splits['train'][wnid] = [f'train/{wnid}/{n}' for n in train]
        splits['val'][wnid] = [f'train/{wnid}/{n}' for n in val]
    splits['test'] = collect_test(root, wnids, val_labels, devkit_meta)

    foreign = [] if force else foreign_annotation_files(out_dir)
    if foreign:
        raise FileExistsError(
            f'refusing to overwrite {", ".join(map(repr, foreign))}: not '
            'written by the ImageNet-100 converter (force=True / --force '
            'overwrites)'
        )
    os.makedirs(out_dir, exist_ok=True)
    _link_images(root, osp.join(out_dir, 'images'))
    with open(osp.join(out_dir, 'classes.txt'), 'w') as f:
        f.write(''.join(f'{wnid}\n' for wnid in wnids))
    for split, per_class in splits.items():
        with open(osp.join(out_dir, f'{split}.txt'), 'w') as f:
            for label, wnid in enumerate(wnids):
                f.write(
                    ''.join(f'{path} {label}\n' for path in per_class[wnid])
                )
    counts: Dict[str, object] = dict(classes=wnids)
    for split, per_class in splits.items():
        counts[split] = {wnid: len(per_class[wnid]) for wnid in wnids}
    return counts


#: The lines of the files build_imagenet100 writes (a wnid; a path under
#: train/ or val/ and a label).
_OUR_LINES = {
    'classes.txt': re.compile(r'n\d{8}\n?'),
    'train.txt': re.compile(r'train/n\d{8}/.+ \d+\n?'),
    'val.txt': re.compile(r'train/n\d{8}/.+ \d+\n?'),
    'test.txt': re.compile(r'val/(n\d{8}/)?.+ \d+\n?'),
}


def foreign_annotation_files(out_dir: str) -> List[str]:
    """The files :func:`build_imagenet100` would write in ``out_dir``
    (``classes.txt``, ``train.txt``, ``val.txt``, ``test.txt``) that exist
    and hold something else than it writes (an empty file, a write cut
    short, is its own)."""
    foreign = []
    for name, pattern in _OUR_LINES.items():
        path = osp.join(out_dir, name)
        if not osp.lexists(path):
            continue
        try:
            with open(path, encoding='utf-8') as f:
                ours = all(pattern.fullmatch(line) for line in f)
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            foreign.append(path)
    return foreign


def _link_images(root: str, link: str) -> None:
    """Point ``link`` at the ImageNet root (replacing an older link)."""
    target = osp.abspath(root)
    if osp.islink(link):
        os.remove(link)
    elif osp.exists(link):
        raise ImageNetTreeError(
            f'{link}: exists and is not a link; refusing to replace it'
        )
    os.symlink(target, link, target_is_directory=True)
