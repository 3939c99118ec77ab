"""A tiny, fast mmengine training setup for the utils tests.

The dataset augments each sample with ``random``, ``numpy`` and ``torch`` draws
(as mmdet's transforms do), so seeding bugs change the trained weights; the
metric returns numpy values, as ``CocoMetric`` does, so checkpoints hold the
numpy types ``dn_mmdet.utils.compat`` allows.
"""
import random
import uuid

import numpy as np
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.runner import Runner
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __init__(self, size=16):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 4, generator=gen)
        self.y = self.x.sum(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = (np.random.randn(4) * 0.1 + random.random() * 0.1)
        x = self.x[i] + torch.from_numpy(noise).float() + torch.rand(4) * 0.1
        return dict(inputs=x, target=self.y[i])


@MODELS.register_module(force=True)
class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 1)

    def forward(self, inputs, target, mode='tensor'):
        x = torch.stack(inputs)
        pred = self.out(torch.relu(self.bn(self.fc(x)))).squeeze(1)
        if mode == 'loss':
            return dict(loss=((pred - torch.stack(target))**2).mean())
        return [
            dict(pred=p, target=t) for p, t in zip(pred, torch.stack(target))
        ]


class ToyMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            self.results.append(
                np.float64((sample['pred'] - sample['target']).item()**2))

    def compute_metrics(self, results):
        return dict(mse=np.float64(np.mean(results)), count=np.int64(
            len(results)))


def build_toy_runner(work_dir,
                     max_epochs=3,
                     num_workers=0,
                     persistent_workers=False,
                     seed=0,
                     resume=False,
                     epoch_seed_hook=True,
                     checkpoint=None,
                     **kwargs):
    """A Runner training :class:`ToyModel` for ``max_epochs`` epochs."""
    loader = dict(
        dataset=ToyDataset(),
        sampler=dict(type='DefaultSampler', shuffle=True),
        batch_size=4,
        num_workers=num_workers,
        persistent_workers=persistent_workers)
    default_hooks = dict(
        logger=dict(type='LoggerHook', interval=1),
        checkpoint=checkpoint or dict(
            type='CheckpointHook',
            interval=1,
            max_keep_ckpts=2,
            save_best='mse',
            rule='less',
            backend_args=dict(backend='atomic_local')))
    if epoch_seed_hook:
        default_hooks['epoch_seed'] = dict(type='EpochSeedHook')
    return Runner(
        # Built by the runner, after it seeded the generators.
        model=dict(type='ToyModel'),
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler',
                                                 shuffle=False)),
        val_evaluator=[ToyMetric()],
        val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        optim_wrapper=dict(
            optimizer=dict(type='RMSprop', lr=0.01, momentum=0.9)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.3, by_epoch=False, end=3),
            dict(type='MultiStepLR', milestones=[2], by_epoch=True)
        ],
        default_hooks=default_hooks,
        randomness=dict(seed=seed, deterministic=True),
        resume=resume,
        default_scope='mmdet',
        # Unique: runners made in the same second would share a name.
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        **kwargs)
