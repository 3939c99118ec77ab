"""The embedded classification data (dn_mmdet.datasets.shapes_cls_generator:
real JPEG crops in mmpretrain CustomDataset format, deterministic) and its
command line tools/misc/make_shapes_cls_dataset.py."""

import hashlib
import os
import os.path as osp
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mmpretrain.datasets import CustomDataset
from PIL import Image

from dn_mmdet.datasets import SHAPES_CLASSES
from dn_mmdet.datasets import shapes_cls_generator as gen

TOOL = (
    Path(__file__).resolve().parents[2]
    / 'tools/misc/make_shapes_cls_dataset.py'
)


@pytest.fixture(scope='module')
def cli():
    """The CLI's functions, without running it."""
    return SimpleNamespace(**runpy.run_path(str(TOOL)))


def digest(root):
    """Hash of the annotation files and the decoded pixels of every crop."""
    h = hashlib.sha256()
    for split in ('train', 'val'):
        with open(osp.join(root, 'meta', f'{split}.txt'), 'rb') as f:
            h.update(f.read())
        for name in sorted(os.listdir(osp.join(root, split))):
            h.update(np.asarray(Image.open(osp.join(root, split, name))).data)
    return h.hexdigest()


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes_cls'))
    summary = gen.generate_shapes_cls_dataset(
        root, num_train=30, num_val=10, seed=0, size=32
    )
    return root, summary


def test_files_and_mmpretrain_reads_them(generated):
    root, summary = generated
    assert open(osp.join(root, 'meta', 'classes.txt')).read().split() == list(
        SHAPES_CLASSES
    )
    for split, num in (('train', 30), ('val', 10)):
        assert summary[split]['num_images'] == num
        assert sum(summary[split]['class_counts']) == num
        dataset = CustomDataset(
            data_root=root,
            ann_file=f'meta/{split}.txt',
            data_prefix='',
            classes=osp.join(root, 'meta', 'classes.txt'),
        )
        assert len(dataset) == num
        labels = [dataset.get_data_info(i)['gt_label'] for i in range(num)]
        assert set(labels) <= set(range(len(SHAPES_CLASSES)))
        for i in range(num):
            with Image.open(dataset.get_data_info(i)['img_path']) as img:
                assert img.format == 'JPEG' and img.size == (32, 32)
    # several classes in a small sample, roughly balanced in a larger one
    assert len({c for c in summary['train']['class_counts'] if c}) >= 4


def test_deterministic_whatever_the_workers(generated, tmp_path):
    root, _ = generated
    again = str(tmp_path / 'again')
    gen.generate_shapes_cls_dataset(
        again, num_train=30, num_val=10, seed=0, size=32, workers=2
    )
    assert digest(again) == digest(root)
    other = str(tmp_path / 'other')
    gen.generate_shapes_cls_dataset(
        other, num_train=30, num_val=10, seed=1, size=32
    )
    assert digest(other) != digest(root)


def test_crops_are_centred_on_their_shape():
    """A crop is a square around the object's box, shifted into the image
    where the square would cross the border."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 170:200] = 255  # the object: a 30 x 20 box at the right edge
    rng = np.random.default_rng(0)
    [(crop, label)] = gen.crop_objects(
        img, [dict(bbox=[170, 40, 30, 20], category_id=3)], rng, size=24
    )
    assert label == 2 and crop.shape == (24, 24, 3)
    bright = crop.mean(axis=2) > 127
    rows = np.flatnonzero(bright.any(axis=1))
    cols = np.flatnonzero(bright.any(axis=0))
    # vertically centred; 1.2-1.6 x 30 px wide, so the object covers 62-83%
    # of the crop, which ends at the image border
    assert abs((rows[0] + rows[-1]) / 2 - 11.5) <= 1
    assert cols[-1] == 23 and 0.55 <= (cols[-1] - cols[0] + 1) / 24 <= 0.9


def test_ensure_is_idempotent_and_cli(cli, tmp_path, capsys):
    out = str(tmp_path / 'cls')
    argv = [
        '--out',
        out,
        '--num-train',
        '12',
        '--num-val',
        '4',
        '--size',
        '16',
        '--workers',
        '0',
    ]
    cli.main(argv)
    assert 'wrote 12 train and 4 val images (16x16)' in capsys.readouterr().out
    stamp = osp.getmtime(osp.join(out, gen.STAMP_NAME))
    cli.main(argv)
    assert 'is up to date' in capsys.readouterr().out
    assert osp.getmtime(osp.join(out, gen.STAMP_NAME)) == stamp
    # other parameters: regenerated, no stale crops left
    cli.main(
        [
            '--out',
            out,
            '--num-train',
            '8',
            '--num-val',
            '4',
            '--size',
            '16',
            '--workers',
            '0',
        ]
    )
    assert len(os.listdir(osp.join(out, 'train'))) == 8


@pytest.mark.parametrize(
    'argv, message',
    [
        (
            ['--size', '8'],
            "argument --size: expected a whole number >= 16, got '8'",
        ),
        (
            ['--num-train', '0'],
            'argument --num-train: expected a whole number >= 1',
        ),
        # a negative seed was numpy's traceback (SeedSequence)
        (
            ['--seed', '-1'],
            "argument --seed: expected a whole number >= 0, got '-1'",
        ),
        (
            ['--workers', '-2'],
            'argument --workers: expected a whole number >= 0',
        ),
    ],
)
def test_cli_rejects_bad_arguments(cli, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.parse_args(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_users_annotation_files_are_not_overwritten(cli, tmp_path, tool_env):
    """Issue 25: ``--out DIR`` overwrote a user's ``meta/train.txt`` and
    ``meta/classes.txt`` without ``--force``. Now a real run of the tool
    refuses, naming them, and writes nothing; ``--force`` overwrites."""
    out = tmp_path / 'mine'
    (out / 'meta').mkdir(parents=True)
    train = out / 'meta' / 'train.txt'
    classes = out / 'meta' / 'classes.txt'
    train.write_text('cats/001.jpg 0\ndogs/001.jpg 1\n')
    classes.write_text('cat\ndog\n')
    command = [
        sys.executable,
        str(TOOL),
        '--out',
        str(out),
        '--num-train',
        '4',
        '--num-val',
        '2',
        '--size',
        '16',
        '--workers',
        '0',
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, env=tool_env, timeout=300
    )
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert (
        f"shapes_cls: error: refusing to overwrite '{classes}', "
        f"'{train}': not written by the shapes classification "
        'generator (force=True / --force overwrites)'
    ) in proc.stderr
    assert train.read_text() == 'cats/001.jpg 0\ndogs/001.jpg 1\n'
    assert classes.read_text() == 'cat\ndog\n'
    assert sorted(p.name for p in out.iterdir()) == ['meta']
    cli.main(command[2:] + ['--force'])
    assert train.read_text().startswith('train/000001.jpg ')


def test_its_own_annotation_files_are_rewritten(tmp_path):
    """The generator's own files (and empty ones, a write cut short) are
    not a user's: a run with other parameters rewrites them."""
    out = str(tmp_path / 'cls')
    assert gen.ensure_shapes_cls_dataset(out, 6, 2, size=16)
    assert gen.foreign_annotation_files(out) == []
    open(osp.join(out, 'meta', 'val.txt'), 'w').close()
    os.remove(osp.join(out, gen.STAMP_NAME))  # as if interrupted
    assert gen.ensure_shapes_cls_dataset(out, 5, 2, size=16)
    with open(osp.join(out, 'meta', 'train.txt')) as f:
        assert len(f.readlines()) == 5
    with open(osp.join(out, 'meta', 'val.txt'), 'a') as f:
        f.write('val/extra.png 0\n')  # edited by hand: a user's now
    with pytest.raises(FileExistsError, match='val.txt'):
        gen.ensure_shapes_cls_dataset(out, 6, 2, size=16)
