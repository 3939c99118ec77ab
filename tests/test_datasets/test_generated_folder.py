"""dn_mmdet.datasets.generated_folder: the stamp and the generated images
of a data-set folder, shared by both shapes generators (their ensure_*
functions are tested in tests/test_tools/test_shapes*_generator.py)."""

import json
import os

import pytest

from dn_mmdet.datasets.generated_folder import (
    read_stamp,
    regenerate,
    remove_generated_images,
)


def test_read_stamp_of_a_missing_damaged_and_good_stamp(tmp_path):
    assert read_stamp(str(tmp_path), 'stamp.json') is None
    (tmp_path / 'stamp.json').write_text('{"seed": 1')  # cut short
    assert read_stamp(str(tmp_path), 'stamp.json') is None
    (tmp_path / 'stamp.json').write_text('{"seed": 1}')
    assert read_stamp(str(tmp_path), 'stamp.json') == {'seed': 1}


def test_remove_generated_images_keeps_other_files(tmp_path):
    for name in ('000001.jpg', '123456.jpg', '0000001.jpg', 'mine.jpg'):
        (tmp_path / name).write_bytes(b'')
    (tmp_path / '000002.png').write_bytes(b'')
    remove_generated_images(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [
        '0000001.jpg',
        '000002.png',
        'mine.jpg',
    ]
    remove_generated_images(str(tmp_path / 'absent'))  # no error


def test_regenerate_writes_the_stamp_after_the_data(tmp_path):
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / '000009.jpg').write_bytes(b'old')
    (tmp_path / 'train' / 'mine.jpg').write_bytes(b'user')
    (tmp_path / 'stamp.json').write_text('{"seed": 0}')
    seen = {}

    def generate():
        # The old stamp and the old images are gone before any writing.
        seen['stamp'] = read_stamp(str(tmp_path), 'stamp.json')
        seen['images'] = sorted(os.listdir(tmp_path / 'train'))
        (tmp_path / 'train' / '000001.jpg').write_bytes(b'new')

    regenerate(str(tmp_path), 'stamp.json', {'seed': 1}, ['train'], generate)
    assert seen == {'stamp': None, 'images': ['mine.jpg']}
    assert sorted(os.listdir(tmp_path / 'train')) == ['000001.jpg', 'mine.jpg']
    assert json.loads((tmp_path / 'stamp.json').read_text()) == {'seed': 1}


def test_an_interrupted_regenerate_leaves_no_stamp(tmp_path):
    (tmp_path / 'stamp.json').write_text('{"seed": 0}')

    def generate():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        regenerate(str(tmp_path), 'stamp.json', {'seed': 1}, [], generate)
    assert not (tmp_path / 'stamp.json').exists()
