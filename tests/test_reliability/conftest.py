"""The project's own shapes configs on a tiny embedded data set.

``shapes_data`` draws 8 training and 4 validation images once per session;
``shapes_cfg`` loads a ``configs/ssdlite/*shapes.py`` config, points it at
that data and shrinks it (batch, workers, epochs, no validation) so a few
real training iterations of the full SSDLite take seconds.
"""
import os.path as osp
import uuid

import pytest
from mmengine.config import Config
from mmengine.hooks import Hook

import dn_mmdet  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BN_CONFIG = osp.join(REPO, 'configs', 'ssdlite',
                     'ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py')
DN_CONFIG = osp.join(REPO, 'configs', 'ssdlite',
                     'ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py')
NUM_TRAIN = 8


@pytest.fixture(scope='session')
def shapes_data(tmp_path_factory, shapes_generator) -> str:
    root = str(tmp_path_factory.mktemp('shapes'))
    shapes_generator.generate_shapes_dataset(
        root, num_train=NUM_TRAIN, num_val=4, img_size=(64, 96))
    return root


def shapes_cfg(config: str,
               data_root: str,
               work_dir: str,
               batch_size: int = 4,
               max_epochs: int = 2,
               input_size: int = None) -> Config:
    """``config`` trained on ``data_root``: small, single-worker, no
    validation (these tests are about training).

    Args:
        input_size (int, optional): Resize the training images to this size
            instead of the config's.
    """
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'test_{uuid.uuid4().hex}'
    loader = cfg.train_dataloader
    loader.dataset.data_root = data_root + '/'
    # Keep every image (the tests count iterations).
    loader.dataset.filter_cfg = dict(filter_empty_gt=False)
    loader.batch_size = batch_size
    loader.num_workers = 0
    loader.persistent_workers = False
    if input_size is not None:
        for step in loader.dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (input_size, input_size)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
    cfg.default_hooks.checkpoint.pop('save_best', None)
    cfg.default_hooks.checkpoint.pop('rule', None)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.pop('visualization', None)
    cfg.log_level = 'WARNING'
    return cfg


class InjectNaN(Hook):
    """Put a NaN into one element of a named module's output at one
    training iteration (0-based ``runner.iter``).

    NaN rather than Inf: the ReLU6 after every norm layer of MobileNetV2
    would clip an Inf to 6.
    """

    priority = 'HIGHEST'

    def __init__(self, module: str, at_iter: int) -> None:
        self.module, self.at_iter = module, at_iter

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model

        def hook(module, args, output):
            if runner.iter == self.at_iter:
                output = output.clone()
                output.view(-1)[0] = float('nan')
                return output

        model.get_submodule(self.module).register_forward_hook(hook)


@pytest.fixture
def reliability():
    """The helpers of this module, as a namespace for the tests."""

    class Namespace:
        pass

    ns = Namespace()
    ns.BN_CONFIG, ns.DN_CONFIG, ns.NUM_TRAIN = BN_CONFIG, DN_CONFIG, NUM_TRAIN
    ns.shapes_cfg, ns.InjectNaN = shapes_cfg, InjectNaN
    return ns
