"""The suite's toy runner: a real mmengine Runner on a tiny conv net.

A whole run takes a fraction of a second, yet goes through everything the
hooks and utilities rely on: ``BaseModel.train_step``, ``OptimWrapper``,
parameter schedulers, validation with a metric, ``CheckpointAfterValHook``
(mmengine's ``CheckpointHook``, as the project's runtime configs) writing
real files through the atomic backend, resume. The dataset draws from
``random``, ``numpy`` and ``torch`` for each sample (as mmdet's transforms
do), so a seeding bug changes the trained weights; the metric returns numpy
values (as ``CocoMetric``), so checkpoints hold the numpy types
``dn_mmdet.utils.compat`` allows.

Tests get this module through the ``toy`` fixture (tests/conftest.py);
a subprocess imports it by name, with the fixture's folder on its path.
"""

import random
import uuid

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.runner import Runner
from torch.utils.data import Dataset

import dn_mmdet  # noqa: F401  (registers the hooks, the atomic backend)


class ToyDataset(Dataset):
    """``n`` random 3 x size x size images with binary labels, plus noise
    drawn from the three global generators."""

    metainfo = dict(classes=('a', 'b'))

    def __init__(self, n: int = 8, size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        noise = 0.1 * (torch.rand(1) + random.random() + np.random.rand())
        return dict(inputs=self.x[i] + float(noise), labels=self.y[i])


@MODELS.register_module(force=True)  # built after seeding, from its name
class ToyNet(BaseModel):
    """conv-norm-ReLU x2 (the second with stride 2), global pool, linear.

    Qualified names: ``backbone.0.conv``, ``backbone.0.bn`` (``.dn`` for
    DN...), ``backbone.1.conv``, ``backbone.1.bn``, ``head``.
    """

    def __init__(self, norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvModule(3, 8, 3, padding=1, norm_cfg=norm_cfg),
            ConvModule(8, 16, 3, stride=2, padding=1, norm_cfg=norm_cfg),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, inputs, labels=None, mode='loss'):
        logits = self.head(self.backbone(inputs).mean((2, 3)))
        if mode == 'loss':
            return dict(loss_cls=F.cross_entropy(logits, labels))
        return [dict(logits=lo, label=la) for lo, la in zip(logits, labels)]


class ToyMetric(BaseMetric):
    """Cross-entropy and accuracy, as numpy values."""

    def process(self, data_batch, data_samples):
        for s in data_samples:
            self.results.append(
                (
                    F.cross_entropy(s['logits'], s['label']).item(),
                    int(s['logits'].argmax() == s['label']),
                )
            )

    def compute_metrics(self, results):
        loss, correct = np.array(results).T
        return dict(xent=np.float64(loss.mean()), acc=np.int64(correct.sum()))


class InjectFault(Hook):
    """Put a NaN / Inf into one named layer at one training iteration.

    Args:
        module (str): Qualified name of the target module.
        at_iter (int): ``runner.iter`` at which the fault happens (0-based).
        where (str): ``'output'``: one element of the module's output;
            ``'grad'``: the gradient of its ``weight``; ``'running_var'``:
            one element of the running variance of the module (or of its
            statistics child ``bn``) before the forward pass.
        value (float): The injected value.
    """

    priority = 'HIGHEST'

    def __init__(
        self,
        module: str,
        at_iter: int,
        where: str = 'output',
        value: float = float('nan'),
    ) -> None:
        self.module, self.at_iter = module, at_iter
        self.where, self.value = where, value
        self.fired = 0

    def before_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        target = model.get_submodule(self.module)

        def active():
            return runner.iter == self.at_iter

        def on_output(module, args, output):
            if active():
                self.fired += 1
                output = output.clone()
                output.view(-1)[0] = self.value
                return output

        def on_grad(grad):
            if active():
                self.fired += 1
                return torch.full_like(grad, self.value)

        def on_stats(module, args):
            if active():
                self.fired += 1
                stats = getattr(module, 'bn', module)
                with torch.no_grad():
                    stats.running_var[0] = self.value

        if self.where == 'output':
            target.register_forward_hook(on_output)
        elif self.where == 'grad':
            target.weight.register_hook(on_grad)
        elif self.where == 'running_var':
            target.register_forward_pre_hook(on_stats)
        else:
            raise ValueError(self.where)


def build_runner(
    work_dir,
    model=None,
    max_epochs: int = 2,
    n: int = 8,
    batch_size: int = 4,
    img_size: int = 8,
    drop_last: bool = False,
    num_workers: int = 0,
    persistent_workers: bool = False,
    lr: float = 0.1,
    validate: bool = False,
    seed: int = 0,
    epoch_seed_hook: bool = True,
    checkpoint: dict = None,
    **kwargs,
) -> Runner:
    """A Runner training ``model`` (a :class:`ToyNet` by default) on
    :class:`ToyDataset`: ``n / batch_size`` iterations an epoch, a
    checkpoint every epoch (two kept, written atomically), validation every
    epoch with a numpy metric if ``validate``. ``kwargs`` go to the Runner
    (``custom_hooks``, ``resume``, ``load_from``, ``train_cfg``, ...)."""
    loader = dict(
        dataset=ToyDataset(n, img_size),
        sampler=dict(type='DefaultSampler', shuffle=True),
        collate_fn=dict(type='default_collate'),
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=persistent_workers,
    )
    default_hooks = dict(
        # As configs/_base_/default_runtime.py: resume and load_from read
        # mmengine's checkpoints with dn_mmdet's weights-only loader.
        safe_checkpoint_loader=dict(type='SafeCheckpointLoaderHook'),
        logger=dict(type='LoggerHook', interval=1),
        checkpoint=checkpoint
        or dict(
            type='CheckpointAfterValHook',
            interval=1,
            max_keep_ckpts=2,
            backend_args=dict(backend='atomic_local'),
        ),
    )
    if epoch_seed_hook:
        default_hooks['epoch_seed'] = dict(type='EpochSeedHook')
    if validate:
        default_hooks['checkpoint'].update(save_best='xent', rule='less')
        kwargs.update(
            val_dataloader=dict(
                loader, sampler=dict(type='DefaultSampler', shuffle=False)
            ),
            val_evaluator=[ToyMetric()],
            val_cfg=dict(),
        )
    kwargs.setdefault('train_cfg', dict(by_epoch=True, max_epochs=max_epochs))
    kwargs.setdefault(
        'optim_wrapper', dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9))
    )
    return Runner(
        model=model if model is not None else dict(type='ToyNet'),
        work_dir=str(work_dir),
        train_dataloader=loader,
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.3, by_epoch=False, end=3),
            dict(type='MultiStepLR', milestones=[2], by_epoch=True),
        ],
        default_hooks=default_hooks,
        randomness=dict(seed=seed, deterministic=True),
        default_scope='mmdet',
        # Unique: runners made in the same second would share a logger.
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        **kwargs,
    )
