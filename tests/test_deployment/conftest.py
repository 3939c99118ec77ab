"""A seeded DN-B shapes detector and its checkpoint, for the deployment
tests (the real SSDLite config, 5 classes, 128 px)."""

import pytest
import torch
from mmengine.config import Config

from dn_mmdet.datasets import SHAPES_CLASSES


def _seeded_detector(cfg: Config):
    """``cfg``'s detector with seeded weights in eval, every zero-initialised
    parameter (DN's SC-Module output layer) and the running statistics set
    to random values, so that DN's per-sample affine and the statistics
    change the outputs as in a trained model."""
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(0, 0.1)
        for name, buf in model.named_buffers():
            if name.endswith('running_mean'):
                buf.normal_(0, 0.2)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 2.0)
    model.dataset_meta = dict(classes=SHAPES_CLASSES)
    return model.eval()


@pytest.fixture(scope='session')
def seeded_detector():
    """``seeded_detector(kind, **backbone_norm)``: a seeded shapes detector
    (``kind`` as ``shapes_config``), DN options overridden if given."""

    def build(config_path, **norm_options):
        cfg = Config.fromfile(config_path)
        if norm_options:
            cfg.model.backbone.norm_cfg.update(norm_options)
        return _seeded_detector(cfg)

    return build


@pytest.fixture(scope='session')
def dn_detector(seeded_detector, shapes_config):
    return seeded_detector(shapes_config('dn'))


@pytest.fixture(scope='session')
def dn_checkpoint(dn_detector, tmp_path_factory):
    """The seeded DN-B detector saved as the runner saves a checkpoint:
    with its message hub's log buffers (``HistoryBuffer``, numpy values),
    which torch's weights-only unpickler refuses unless allowed."""
    from mmengine.logging import HistoryBuffer

    path = tmp_path_factory.mktemp('ckpt') / 'dnb_seeded.pth'
    torch.save(
        dict(
            state_dict=dn_detector.state_dict(),
            meta=dict(dataset_meta=dn_detector.dataset_meta, epoch=1),
            message_hub=dict(
                log_scalars={'train/loss': HistoryBuffer([1.5, 1.25], [1, 1])},
                runtime_info=dict(epoch=1),
            ),
        ),
        path,
    )
    return str(path)


@pytest.fixture(scope='session')
def dn_onnx(dn_detector, tmp_path_factory):
    """The seeded DN-B detector exported at 128 px, batch 1, and PyTorch's
    outputs on the traced input."""
    from dn_mmdet.deployment import export_detector

    path = str(tmp_path_factory.mktemp('onnx') / 'dnb.onnx')
    expected = export_detector(dn_detector, path, (128, 128))
    return dict(path=path, expected=expected)
