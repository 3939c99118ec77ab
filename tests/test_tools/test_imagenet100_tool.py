"""The ImageNet-100 converter (dn_mmdet.datasets.imagenet100, and its
command line tools/dataset_converters/imagenet100.py) on small
ImageNet-like trees of real JPEGs: class folders or flat val (both label
formats), the seeded draw and split, mmpretrain reading the result, and
refused malformed trees and overwrites."""

import os
import os.path as osp
import subprocess
import sys

import mat4py
import numpy as np
import pytest
from helpers import REPO
from mmpretrain.datasets import CustomDataset
from PIL import Image

from dn_mmdet.datasets import imagenet100

NUM_CLASSES = 6
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 3
# Deliberately not in sorted order: the devkit's ILSVRC2012_IDs are not.
WNIDS = [
    'n01440764',
    'n09999999',
    'n01443537',
    'n02085620',
    'n04592741',
    'n03000134',
]


@pytest.fixture(scope='module')
def tool():
    return imagenet100


def _jpeg(path, value):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(path)


def make_tree(root, flat_val=False):
    """An ImageNet-1k-like tree; returns {val file name: wnid}."""
    for c, wnid in enumerate(WNIDS):
        for i in range(TRAIN_PER_CLASS):
            _jpeg(osp.join(root, 'train', wnid, f'{wnid}_{i}.JPEG'), c * 10)
    val_labels = {}
    index = 1
    for _ in range(VAL_PER_CLASS):
        for wnid in WNIDS:
            name = f'ILSVRC2012_val_{index:08d}.JPEG'
            folder = 'val' if flat_val else osp.join('val', wnid)
            _jpeg(osp.join(root, folder, name), index)
            val_labels[name] = wnid
            index += 1
    return val_labels


def write_loc_csv(path, labels):
    with open(path, 'w') as f:
        f.write('ImageId,PredictionString\n')
        for name, wnid in labels.items():
            f.write(f'{name[:-5]},{wnid} 1 2 30 40 {wnid} 5 6 7 8\n')


def write_devkit(folder, labels):
    """The devkit's ground truth file and a meta.mat whose ILSVRC2012_IDs
    are in another order than the sorted wnids."""
    os.makedirs(folder, exist_ok=True)
    ids = {wnid: i + 1 for i, wnid in enumerate(WNIDS)}
    mat4py.savemat(
        osp.join(folder, 'meta.mat'),
        dict(synsets=dict(ILSVRC2012_ID=list(ids.values()), WNID=list(ids))),
    )
    gt = osp.join(folder, 'ILSVRC2012_validation_ground_truth.txt')
    with open(gt, 'w') as f:
        for i in range(1, len(labels) + 1):
            f.write(f'{ids[labels[f"ILSVRC2012_val_{i:08d}.JPEG"]]}\n')
    return gt


def read_lines(path):
    with open(path) as f:
        return [line.rsplit(' ', 1) for line in f.read().splitlines()]


@pytest.fixture(scope='module')
def foldered(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet_foldered'))
    return root, make_tree(root)


@pytest.fixture(scope='module')
def flat(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet_flat'))
    return root, make_tree(root, flat_val=True)


def test_class_list_split_and_mmpretrain_reads_it(tool, foldered, tmp_path):
    root, val_labels = foldered
    classes_file = tmp_path / 'classes.txt'
    classes_file.write_text(
        '# three of them\nn04592741\nn01440764  # tench\n\nn02085620\n'
    )
    out = str(tmp_path / 'in100')
    counts = tool.build_imagenet100(root, out, classes_file=str(classes_file))

    wnids = ['n01440764', 'n02085620', 'n04592741']  # sorted: label order
    assert counts['classes'] == wnids
    assert open(osp.join(out, 'classes.txt')).read().split() == wnids
    assert osp.realpath(osp.join(out, 'images')) == osp.realpath(root)
    train = read_lines(osp.join(out, 'train.txt'))
    val = read_lines(osp.join(out, 'val.txt'))
    test = read_lines(osp.join(out, 'test.txt'))
    # int(0.8 * 10) = 8 train and 2 val images a class, as DenseNAS splits
    assert counts['train'] == {w: 8 for w in wnids}
    assert counts['val'] == {w: 2 for w in wnids}
    assert counts['test'] == {w: VAL_PER_CLASS for w in wnids}
    for label, wnid in enumerate(wnids):
        tr = {p for p, lab in train if lab == str(label)}
        va = {p for p, lab in val if lab == str(label)}
        assert not tr & va
        assert tr | va == {
            f'train/{wnid}/{wnid}_{i}.JPEG' for i in range(TRAIN_PER_CLASS)
        }
        te = {p for p, lab in test if lab == str(label)}
        assert te == {
            f'val/{wnid}/{n}' for n, w in val_labels.items() if w == wnid
        }
    # mmpretrain's CustomDataset reads the files (through the images link)
    for split, num in (('train', 24), ('val', 6), ('test', 9)):
        dataset = CustomDataset(
            data_root=out,
            ann_file=f'{split}.txt',
            data_prefix='images',
            classes=osp.join(out, 'classes.txt'),
        )
        assert len(dataset) == num
        assert dataset.metainfo['classes'] == tuple(wnids)
        info = dataset.get_data_info(num - 1)
        assert osp.isfile(info['img_path']) and info['gt_label'] == 2


def test_seeded_draw_and_split(tool, foldered, tmp_path):
    root, _ = foldered

    def build(name, seed):
        out = str(tmp_path / name)
        counts = tool.build_imagenet100(root, out, num_classes=4, seed=seed)
        return counts['classes'], open(osp.join(out, 'val.txt')).read()

    classes, val = build('a', seed=0)
    assert len(classes) == 4 and set(classes) <= set(WNIDS)
    assert classes == sorted(classes)
    assert build('b', seed=0) == (classes, val)  # deterministic
    other_classes, other_val = build('c', seed=3)
    assert (other_classes, other_val) != (classes, val)
    # the split of a class depends on (seed, wnid) only, not on the draw
    files = [f'x{i}.JPEG' for i in range(10)]
    assert tool.split_class(files, 'n01440764', 0, 0.2) == tool.split_class(
        files, 'n01440764', 0, 0.2
    )
    assert tool.split_class(files, 'n01440764', 0, 0.2) != tool.split_class(
        files, 'n01440764', 1, 0.2
    )


@pytest.mark.parametrize('labels_format', ['loc_csv', 'devkit'])
def test_flat_val_gives_the_same_test_split(
    tool, foldered, flat, tmp_path, labels_format
):
    reference = str(tmp_path / 'foldered')
    tool.build_imagenet100(foldered[0], reference, num_classes=4)
    root, val_labels = flat
    if labels_format == 'loc_csv':
        labels_file = str(tmp_path / 'LOC_val_solution.csv')
        write_loc_csv(labels_file, val_labels)
    else:
        labels_file = write_devkit(str(tmp_path / 'devkit'), val_labels)
    out = str(tmp_path / 'flat')
    tool.build_imagenet100(root, out, num_classes=4, val_labels=labels_file)
    for split in ('train', 'val', 'classes'):
        assert (
            open(osp.join(out, f'{split}.txt')).read()
            == open(osp.join(reference, f'{split}.txt')).read()
        )
    flat_test = read_lines(osp.join(out, 'test.txt'))
    folder_test = read_lines(osp.join(reference, 'test.txt'))
    assert sorted((osp.basename(p), lab) for p, lab in flat_test) == sorted(
        (osp.basename(p), lab) for p, lab in folder_test
    )
    assert all(p.startswith('val/ILSVRC2012_val_') for p, _ in flat_test)


@pytest.mark.slow
def test_cli_prints_counts(foldered, tmp_path, tool_env):
    out = tmp_path / 'cli'
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / 'tools/dataset_converters/imagenet100.py'),
            foldered[0],
            '--out',
            str(out),
            '--num-classes',
            '5',
            '--seed',
            '1',
        ],
        capture_output=True,
        text=True,
        env=tool_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert '5 classes (5 drawn with seed 1)' in proc.stdout
    assert 'train      40 images (8-8 a class)' in proc.stdout
    assert 'test       15 images (3-3 a class)' in proc.stdout


def test_cli_names_a_malformed_tree(load_tool, tmp_path):
    """The error names the folder, in one line (sys.exit: exit status 1)."""
    cli = load_tool('dataset_converters/imagenet100')
    with pytest.raises(SystemExit) as err:
        cli.main([str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'o')])
    assert str(err.value.code) == (
        f'imagenet100: error: {tmp_path / "nowhere"}: ImageNet root is not '
        'a folder'
    )


def test_cmc_list_is_shipped(tool):
    path = str(REPO / 'tools/dataset_converters/imagenet100_cmc.txt')
    wnids = tool.read_class_list(
        path, [f'n{i:08d}' for i in range(10**5)] + open(path).read().split()
    )
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert wnids[:2] == ['n02869837', 'n01749939']


def _break(root, how, tmp_path):
    """Make the tree at ``root`` malformed; return extra kwargs and the
    text the error must contain."""
    wnid = WNIDS[0]
    if how == 'no_train':
        os.rename(osp.join(root, 'train'), osp.join(root, 'training'))
        return {}, osp.join(root, 'train') + ': not a folder'
    if how == 'stray_file':
        _jpeg(osp.join(root, 'train', 'stray.JPEG'), 0)
        return {}, osp.join(root, 'train', 'stray.JPEG')
    if how == 'empty_class':
        folder = osp.join(root, 'train', wnid)
        for name in os.listdir(folder):
            os.remove(osp.join(folder, name))
        return {}, f'{folder}: 0 image(s)'
    if how == 'missing_val_class':
        folder = osp.join(root, 'val', wnid)
        os.rename(folder, osp.join(root, f'{wnid}_moved'))
        return {}, f'{folder}: missing'
    if how == 'flat_without_labels':
        return {}, 'give their labels with --val-labels'
    if how == 'unlabelled_image':
        labels = {
            f'ILSVRC2012_val_{i:08d}.JPEG': WNIDS[(i - 1) % 6]
            for i in range(2, 19)
        }
        csv = str(tmp_path / 'LOC_val_solution.csv')
        write_loc_csv(csv, labels)
        return dict(val_labels=csv), 'ILSVRC2012_val_00000001.JPEG'
    if how == 'labelled_missing_image':
        os.remove(osp.join(root, 'val', 'ILSVRC2012_val_00000001.JPEG'))
        labels = {
            f'ILSVRC2012_val_{i:08d}.JPEG': WNIDS[(i - 1) % 6]
            for i in range(1, 19)
        }
        csv = str(tmp_path / 'LOC_val_solution.csv')
        write_loc_csv(csv, labels)
        return dict(val_labels=csv), (
            osp.join(root, 'val', 'ILSVRC2012_val_00000001.JPEG')
            + ': labelled n01440764'
        )
    if how == 'bad_csv_line':
        csv = tmp_path / 'LOC_val_solution.csv'
        csv.write_text('ImageId,PredictionString\nILSVRC2012_val_00000001,\n')
        return dict(val_labels=str(csv)), f'{csv}:2'
    if how == 'unknown_class_in_list':
        classes = tmp_path / 'list.txt'
        classes.write_text(f'{wnid}\nn07777777\n')
        return dict(classes_file=str(classes)), (
            f'{classes}:2: n07777777 has no folder in the training set'
        )
    # issue 25: a name with a line break was written verbatim, one image
    # becoming two annotation lines that name no file
    if how == 'line_break_in_train_name':
        path = osp.join(root, 'train', wnid, f'{wnid}_a\nb.JPEG')
        _jpeg(path, 0)
        return {}, f'{path!r}: the file name has a line break'
    if how == 'line_break_in_val_name':
        path = osp.join(root, 'val', 'x\rILSVRC2012_val_00000001.JPEG')
        _jpeg(path, 0)
        return {}, f'{path!r}: the file name has a line break'
    if how == 'name_not_utf8':  # was a UnicodeEncodeError traceback
        folder = osp.join(root, 'train', wnid)
        with open(os.fsencode(folder) + b'/bad\xff.JPEG', 'wb') as f:
            f.write(open(osp.join(folder, f'{wnid}_0.JPEG'), 'rb').read())
        return {}, "bad\\udcff.JPEG': the file name is not valid UTF-8"
    raise ValueError(how)


@pytest.mark.parametrize(
    'how,flat_val',
    [
        ('no_train', False),
        ('stray_file', False),
        ('empty_class', False),
        ('missing_val_class', False),
        ('flat_without_labels', True),
        ('unlabelled_image', True),
        ('labelled_missing_image', True),
        ('bad_csv_line', True),
        ('unknown_class_in_list', False),
        ('line_break_in_train_name', False),
        ('line_break_in_val_name', True),
        ('name_not_utf8', False),
    ],
)
def test_malformed_tree_is_refused_naming_what(tool, tmp_path, how, flat_val):
    root = str(tmp_path / 'imagenet')
    make_tree(root, flat_val=flat_val)
    kwargs, message = _break(root, how, tmp_path)
    kwargs.setdefault('num_classes', NUM_CLASSES)
    with pytest.raises(tool.ImageNetTreeError) as err:
        tool.build_imagenet100(root, str(tmp_path / 'out'), **kwargs)
    assert message in str(err.value)
    assert not osp.exists(tmp_path / 'out' / 'train.txt')


def test_a_users_annotation_files_are_not_overwritten(
    tool, foldered, tmp_path
):
    """A file of the same name that the converter did not write is named
    and left alone (nothing is written); its own files, and ``force``,
    are overwritten."""
    root, _ = foldered
    out = tmp_path / 'out'
    out.mkdir()
    mine = out / 'train.txt'
    mine.write_text('my/own/list.jpg 0\n')
    with pytest.raises(FileExistsError) as err:
        tool.build_imagenet100(root, str(out), num_classes=4)
    assert str(err.value) == (
        f"refusing to overwrite '{mine}': not written by the ImageNet-100 "
        'converter (force=True / --force overwrites)'
    )
    assert mine.read_text() == 'my/own/list.jpg 0\n'
    assert sorted(p.name for p in out.iterdir()) == ['train.txt']
    tool.build_imagenet100(root, str(out), num_classes=4, force=True)
    assert tool.foreign_annotation_files(str(out)) == []
    counts = tool.build_imagenet100(root, str(out), num_classes=5, seed=2)
    assert len(read_lines(str(out / 'classes.txt'))) == 5
    assert len(counts['classes']) == 5


def test_cli_rejects_a_negative_seed(capsys):
    """Was numpy's traceback (SeedSequence); now a usage error."""
    import runpy

    cli = runpy.run_path(str(REPO / 'tools/dataset_converters/imagenet100.py'))
    with pytest.raises(SystemExit) as exit:
        cli['parse_args'](['data/imagenet', '--seed', '-1'])
    assert exit.value.code == 2
    assert (
        "argument --seed: expected a whole number >= 0, got '-1'"
        in capsys.readouterr().err
    )
