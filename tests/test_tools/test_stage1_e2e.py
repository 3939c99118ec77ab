"""Stage 1 then the hand-off, as a user runs them: tools/train.py trains the
CPU DN-B classifier config on a tiny shape-crop data set, tools/test.py
reports its top-1, and the pre-trained shapes detector config loads the
checkpoint's backbone strictly; checkpoints of other models are refused with
the mismatching keys listed. (The tools run in this process: the detector
tools' own tests run them as subprocesses.)"""

import glob
import re

import pytest
import torch
from helpers import REPO, cls_options
from mmengine.config import Config
from mmengine.fileio import load
from mmengine.registry import MODELS, init_default_scope

from dn_mmdet.datasets.shapes_cls_generator import generate_shapes_cls_dataset
from dn_mmdet.utils import load_from_local

CLS_BN = REPO / 'configs/mobilenet_v2/mobilenet-v2-bn_1xb32-cpu_shapes-cls.py'
CLS_DNB = (
    REPO / 'configs/mobilenet_v2/'
    'mobilenet-v2-dnb-r16-goup_1xb32-cpu_shapes-cls.py'
)
DET_DNB = (
    REPO / 'configs/ssdlite/'
    'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu-pretrained_shapes.py'
)
DET_BN = (
    REPO / 'configs/ssdlite/'
    'ssdlite_mobilenetv2-bn_1xb16-cpu-pretrained_shapes.py'
)


@pytest.fixture(scope='module')
def stage1(train_tool, tmp_path_factory):
    """One epoch of the DN-B classifier through tools/train.py."""
    tmp = tmp_path_factory.mktemp('stage1')
    root = tmp / 'shapes_cls'
    generate_shapes_cls_dataset(
        str(root), num_train=16, num_val=8, seed=0, size=32
    )
    work_dir = tmp / 'work_dir'
    train_tool.main(
        [
            str(CLS_DNB),
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *cls_options(root),
        ]
    )
    log = ''.join(
        open(p).read() for p in glob.glob(str(work_dir / '*' / '*.log'))
    )
    return dict(tmp=tmp, root=root, work_dir=work_dir, log=log)


@pytest.mark.slow
def test_classifier_trains_with_progress_and_keeps_best(stage1):
    work_dir, log = stage1['work_dir'], stage1['log']
    assert re.search(r'Epoch\(train\) +\[1\]\[1/4\].*loss: ', log)
    assert re.search(r'Epoch\(val\) \[1\]\[2/2\] +accuracy/top1: ', log)
    assert (work_dir / 'epoch_1.pth').is_file()
    assert (work_dir / 'best_accuracy_top1_epoch_1.pth').is_file()
    state = load_from_local(work_dir / 'epoch_1.pth')['state_dict']
    assert 'backbone.stem.dn.sc.fc2.weight' in state
    assert state['head.fc.weight'].shape == (5, 1280)


def test_test_tool_reports_top1(stage1, test_tool, capsys):
    out = stage1['tmp'] / 'preds.pkl'
    metrics = test_tool.main(
        [
            str(CLS_DNB),
            str(stage1['work_dir'] / 'epoch_1.pth'),
            '--work-dir',
            str(stage1['tmp'] / 'test_dir'),
            '--out',
            str(out),
            '--cfg-options',
            *cls_options(stage1['root']),
        ]
    )
    printed = capsys.readouterr().out
    match = re.search(r'^top-1 accuracy: (\d+\.\d\d)%$', printed, re.M)
    assert match, printed[-2000:]
    assert float(match.group(1)) == round(metrics['accuracy/top1'], 2)
    assert 0 <= metrics['accuracy/top1'] <= 100
    assert len(load(str(out))) == 8  # one prediction per val image


def build_detector(config, checkpoint):
    cfg = Config.fromfile(str(config))
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    return detector


def test_detector_loads_the_classifier_backbone_strictly(stage1):
    checkpoint = stage1['work_dir'] / 'epoch_1.pth'
    detector = build_detector(DET_DNB, checkpoint)
    state = load_from_local(checkpoint)['state_dict']
    backbone = detector.backbone.state_dict()
    assert {f'backbone.{k}' for k in backbone} == {
        k for k in state if k.startswith('backbone.')
    }
    for key, value in backbone.items():
        assert torch.equal(value, state[f'backbone.{key}']), key


def save_classifier(config, path, cfg_options=None):
    """The state dict of a freshly built classifier, saved as a runner
    would (under ``state_dict``)."""
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict()), path)
    return path


def test_bn_checkpoint_into_dn_backbone_is_refused(tmp_path):
    checkpoint = save_classifier(CLS_BN, tmp_path / 'bn.pth')
    with pytest.raises(RuntimeError) as err:
        build_detector(DET_DNB, checkpoint)
    message = str(err.value)
    # every DN key is missing (7 a layer), every BN key unexpected (5;
    # num_batches_tracked is not compared)
    assert 'does not match the model' in message
    assert (
        '364 missing from the checkpoint: stem.dn.base_scale, '
        'stem.dn.base_shift'
    ) in message
    assert '260 not in the model: stem.bn.weight, stem.bn.bias' in message
    assert 'bn2dn.py' in message


def test_mmpretrain_mobilenet_v2_checkpoint_is_refused(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text(
        "_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'\n"
    )
    checkpoint = save_classifier(path, tmp_path / 'mmpretrain.pth')
    with pytest.raises(RuntimeError) as err:
        build_detector(DET_BN, checkpoint)
    message = str(err.value)
    # all of them (the model's num_batches_tracked are not compared)
    assert (
        '260 missing from the checkpoint: stem.conv.weight, stem.bn.weight'
    ) in message
    assert (
        '312 not in the model: conv1.conv.weight, conv1.bn.weight' in message
    )
