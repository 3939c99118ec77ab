"""Every place the tools read a checkpoint: a checkpoint of another model is
refused before anything is trained or evaluated with it (unless a partial
load is asked for), and an empty or truncated one is named with what to do.
"""

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope


@pytest.fixture(scope='module')
def bn_checkpoint(tmp_path_factory, shapes_config):
    """The weights of the BN shapes detector, as a checkpoint file."""
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(shapes_config('bn')).model)
    path = tmp_path_factory.mktemp('bn') / 'bn.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return path


@pytest.fixture
def options(shapes_data, shapes_options):
    return shapes_options(shapes_data, validate=True)


def exit_message_of_test_py(
    test_tool, config, checkpoint, options, work_dir
) -> str:
    """tools/test.py's exit message for ``checkpoint`` (it must exit with
    one: a message, not a traceback)."""
    with pytest.raises(SystemExit) as err:
        test_tool.main(
            [
                config,
                str(checkpoint),
                '--work-dir',
                str(work_dir),
                '--cfg-options',
                *options,
            ]
        )
    return str(err.value.code)


def test_test_tool_refuses_a_bn_checkpoint_for_the_dn_config(
    test_tool, shapes_config, bn_checkpoint, options, tmp_path
):
    # Before: mmengine loaded the matching half, and test.py printed the
    # mAP of a partly random model.
    msg = exit_message_of_test_py(
        test_tool, shapes_config('dn'), bn_checkpoint, options, tmp_path
    )
    assert msg.startswith(
        f'tools/test.py: error: Checkpoint {bn_checkpoint}'
        ' does not fit the model'
    )
    assert 'missing from the checkpoint: backbone.' in msg
    assert 'tools/model_converters/bn2dn.py' in msg


def test_train_tool_refuses_a_bn_checkpoint_as_load_from(
    train_tool, shapes_config, bn_checkpoint, options, tmp_path
):
    # Before: one log line, then the backbone trained from scratch.
    with pytest.raises(SystemExit, match='bn2dn.py'):
        train_tool.main(
            [
                shapes_config('dn'),
                '--work-dir',
                str(tmp_path),
                '--cfg-options',
                *options,
                f'load_from={bn_checkpoint}',
            ]
        )
    assert not list(tmp_path.glob('*.pth'))


def test_train_tool_refuses_to_resume_another_configs_checkpoint(
    train_tool, shapes_config, bn_checkpoint, options, tmp_path
):
    # Before: the optimizer's "parameter group" ValueError, naming no file.
    with pytest.raises(
        SystemExit, match=f'error: Checkpoint {bn_checkpoint} does not fit'
    ):
        train_tool.main(
            [
                shapes_config('dn'),
                '--work-dir',
                str(tmp_path),
                '--resume',
                str(bn_checkpoint),
                '--cfg-options',
                *options,
            ]
        )


@pytest.mark.slow
def test_partial_load_on_request(
    train_tool,
    shapes_config,
    bn_checkpoint,
    shapes_data,
    shapes_options,
    tmp_path,
):
    options = shapes_options(shapes_data, max_epochs=1, validate=False)
    train_tool.main(
        [
            shapes_config('dn'),
            '--work-dir',
            str(tmp_path),
            '--cfg-options',
            *options,
            f'load_from={bn_checkpoint}',
            'default_hooks.checkpoint_match.allow_partial=True',
        ]
    )
    assert (tmp_path / 'epoch_1.pth').is_file()


def test_test_tool_names_a_truncated_checkpoint(
    test_tool, shapes_config, bn_checkpoint, options, tmp_path
):
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(bn_checkpoint.read_bytes()[:4096])
    msg = exit_message_of_test_py(
        test_tool, shapes_config('bn'), broken, options, tmp_path
    )
    assert msg.startswith(
        f'tools/test.py: error: Cannot read checkpoint {broken}: the file '
        '(4096 bytes) is truncated or corrupt'
    )


def test_test_tool_names_an_empty_checkpoint(
    test_tool, shapes_config, options, tmp_path
):
    """A zero-byte checkpoint: one line naming the file and what to do (as
    tools/train.py --resume)."""
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    message = exit_message_of_test_py(
        test_tool, shapes_config('bn'), empty, options, tmp_path
    )
    assert message.startswith(
        f'tools/test.py: error: Cannot read checkpoint {empty}: the file is '
        'empty (0 bytes)'
    )
    assert 'copy or download it again' in message
    assert '\n' not in message


def test_bn2dn_names_an_empty_checkpoint(load_tool, tmp_path, monkeypatch):
    bn2dn = load_tool('model_converters/bn2dn')
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    monkeypatch.setattr(
        'sys.argv', ['bn2dn.py', str(empty), str(tmp_path / 'out.pth')]
    )
    with pytest.raises(
        SystemExit,
        match=f'bn2dn: Cannot read checkpoint {empty}: the file is empty',
    ):
        bn2dn.main()
    assert not (tmp_path / 'out.pth').exists()
