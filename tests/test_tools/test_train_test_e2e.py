"""tools/train.py then tools/test.py as a user runs them: real processes,
the real SSDLite config, a tiny embedded data set."""

import glob
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from mmengine.fileio import load

from dn_mmdet.utils import load_from_local


@pytest.fixture(scope='module')
def run(tool_env):

    def run(argv, cwd):
        return subprocess.run(
            [sys.executable, *argv],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=tool_env,
        )

    return run


@pytest.fixture(scope='module')
def options(shapes_data, shapes_options):
    return shapes_options(shapes_data, max_epochs=1, seed=0)


@pytest.fixture(scope='module')
def trained(run, options, shapes_config, tmp_path_factory):
    """One epoch of training through tools/train.py."""
    tmp = tmp_path_factory.mktemp('e2e')
    # A config that forgets custom_imports: train.py imports dn_mmdet itself.
    config = tmp / 'no_custom_imports.py'
    config.write_text(
        f"_base_ = '{shapes_config('bn')}'\n"
        'custom_imports = dict(imports=[])\n'
    )
    work_dir = tmp / 'work_dir'
    proc = run(
        [
            str(REPO / 'tools/train.py'),
            str(config),
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *options,
        ],
        tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(
        tmp=tmp,
        config=config,
        work_dir=work_dir,
        log=proc.stdout + proc.stderr,
    )


@pytest.mark.slow
def test_training_writes_checkpoint_and_shows_progress(trained):
    work_dir = trained['work_dir']
    ckpt = work_dir / 'epoch_1.pth'
    assert ckpt.is_file()
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(ckpt)
    assert re.search(r'Epoch\(train\) \[1\]\[1/\d+\].*loss: ', trained['log'])
    assert re.search(
        r'Epoch\(val\) \[1\]\[\d+/\d+\].*coco/bbox_mAP: ', trained['log']
    )
    # A runner checkpoint (numpy metric values, log buffers) loads
    # weights-only with dn_mmdet's allow-list.
    checkpoint = load_from_local(str(ckpt))
    assert checkpoint['meta']['epoch'] == 1
    best = glob.glob(str(work_dir / 'best_coco_bbox_mAP_epoch_1.pth'))
    assert len(best) == 1
    info = load_from_local(best[0])['message_hub']['runtime_info']
    assert 0.0 <= info['best_score'] <= 1.0


@pytest.mark.slow
def test_test_tool_prints_map_dumps_and_paints(trained, run, options):
    tmp, work_dir = trained['tmp'], trained['work_dir']
    out, show_dir = tmp / 'results.pkl', tmp / 'painted'
    proc = run(
        [
            str(REPO / 'tools/test.py'),
            str(trained['config']),
            str(work_dir / 'epoch_1.pth'),
            '--work-dir',
            str(tmp / 'test_dir'),
            '--out',
            str(out),
            '--show-dir',
            str(show_dir),
            '--cfg-options',
            *options,
        ],
        tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r'^bbox mAP: (\d\.\d+)$', proc.stdout, re.M)
    assert match, proc.stdout[-2000:]
    assert 0.0 <= float(match.group(1)) <= 1.0
    assert 'coco/bbox_mAP_50' in proc.stdout
    results = load(str(out))
    assert len(results) == 4  # one per val image
    assert {'img_id', 'pred_instances'} <= set(results[0])
    assert set(results[0]['pred_instances']) >= {'bboxes', 'scores', 'labels'}
    painted = glob.glob(str(show_dir / '*.jpg')) + glob.glob(
        str(show_dir / '*.png')
    )
    assert len(painted) == 4


# The tool's other outcomes in this process (its main(); the process, its
# exit and its one-line errors are the test above's and test_dist_train's).
@pytest.mark.slow
def test_test_tool_reports_zero_map_without_detections(
    trained, options, test_tool, capsys
):
    """No box above the score threshold: mAP 0 with the reason, not a
    silently missing figure."""
    tmp, work_dir = trained['tmp'], trained['work_dir']
    test_tool.main(
        [
            str(trained['config']),
            str(work_dir / 'epoch_1.pth'),
            '--work-dir',
            str(tmp / 'test_empty'),
            '--cfg-options',
            *options,
            'model.test_cfg.score_thr=1.0',
        ]
    )
    stdout = capsys.readouterr().out
    assert re.search(
        r'^bbox mAP: 0\.0000 \(no detection scored above '
        r'model\.test_cfg\.score_thr=1\.0\)$',
        stdout,
        re.M,
    ), stdout[-2000:]


def test_test_tool_refuses_pickled_callable(trained, options, test_tool):
    """A checkpoint whose pickle calls os.system is refused by name, in one
    line, and the command does not run."""
    tmp = trained['tmp']
    marker, evil = tmp / 'side_effect', tmp / 'evil.pth'

    class Evil:
        # Pickled as a call of os.system (posix.system), not as this class.
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    torch.save(dict(state_dict={}, meta=Evil()), evil)
    assert not marker.exists()  # saving ran nothing
    with pytest.raises(SystemExit) as err:  # a message, not a traceback
        test_tool.main(
            [
                str(trained['config']),
                str(evil),
                '--work-dir',
                str(tmp / 'evil_dir'),
                '--cfg-options',
                *options,
            ]
        )
    message = str(err.value.code)
    assert f'Refusing to load checkpoint {evil}' in message
    assert 'posix.system' in message
    assert '\n' not in message
    assert not marker.exists()
