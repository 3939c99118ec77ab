"""A tiny classifier trained by a real mmengine Runner, and a fault injector.

The model is small enough that a whole run takes a fraction of a second, but
it goes through everything the hooks rely on: ``BaseModel.train_step``,
``OptimWrapper``, ``CheckpointHook`` writing real files, ``MessageHub``.
"""
import uuid

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import dn_mmdet  # noqa: F401  (registers the hooks)


class ToyDataset(Dataset):
    """``n`` random 3x8x8 images with binary labels (fixed seed)."""

    metainfo: dict = {}

    def __init__(self, n: int = 8, size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 2, (n, ), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=self.x[i], labels=self.y[i])


class ToyNet(BaseModel):
    """conv-norm-relu x2 (the second with stride 2), global pool, linear.

    Qualified names: ``backbone.0.conv``, ``backbone.0.bn`` (or ``.dn``...),
    ``backbone.1.conv``, ``backbone.1.bn``, ``head``.
    """

    def __init__(self, norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvModule(3, 8, 3, padding=1, norm_cfg=norm_cfg),
            ConvModule(8, 16, 3, stride=2, padding=1, norm_cfg=norm_cfg))
        self.head = nn.Linear(16, 2)

    def forward(self, inputs, labels=None, mode='loss'):
        logits = self.head(self.backbone(inputs).mean((2, 3)))
        if mode == 'loss':
            return dict(loss_cls=F.cross_entropy(logits, labels))
        return logits


class _NaNInputGradient(torch.autograd.Function):
    """Identity whose backward pass returns NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float('nan'))


class BackwardFaultBN(nn.BatchNorm2d):
    """A BatchNorm2d whose backward pass returns a NaN input gradient while
    ``armed``: a module whose own backward goes wrong."""

    armed = False

    def forward(self, x):
        if self.armed:
            x = _NaNInputGradient.apply(x)
        return super().forward(x)


class InjectFault(Hook):
    """Put a NaN / Inf into one named layer at one training iteration.

    Args:
        module (str): Qualified name of the target module.
        at_iter (int): ``runner.iter`` at which the fault happens (0-based).
        where (str): ``'output'``: one element of the module's output;
            ``'grad'``: the gradient of its ``weight``; ``'input_grad'``:
            the gradient the backward pass of a :class:`BackwardFaultBN`
            returns for its input; ``'running_var'``:
            one element of its running variance (the output stays finite).
        value (float): The injected value.
    """

    priority = 'HIGHEST'

    def __init__(self,
                 module: str,
                 at_iter: int,
                 where: str = 'output',
                 value: float = float('inf')) -> None:
        self.module, self.at_iter, self.where, self.value = \
            module, at_iter, where, value
        self.fired = 0

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model
        target = model.get_submodule(self.module)

        def active():
            return runner.iter == self.at_iter

        if self.where == 'output':

            def hook(module, args, output):
                if active():
                    self.fired += 1
                    output = output.clone()
                    output.view(-1)[0] = self.value
                    return output

            target.register_forward_hook(hook)
        elif self.where == 'grad':

            def grad_hook(grad):
                if active():
                    self.fired += 1
                    return torch.full_like(grad, self.value)

            target.weight.register_hook(grad_hook)
        elif self.where == 'running_var':

            # Before the forward (an in-place change after it would break
            # autograd); the training forward normalises with batch
            # statistics, and its running average of an Inf stays Inf.
            def stat_hook(module, args):
                if active():
                    self.fired += 1
                    stats = module.bn if hasattr(module, 'bn') else module
                    with torch.no_grad():
                        stats.running_var[0] = self.value

            target.register_forward_pre_hook(stat_hook)
        elif self.where == 'input_grad':
            if not isinstance(target, BackwardFaultBN):
                raise TypeError('input_grad needs a BackwardFaultBN target')

            def arm(module, args):
                module.armed = active()
                self.fired += module.armed

            target.register_forward_pre_hook(arm)
        else:
            raise ValueError(self.where)


def build_runner(work_dir,
                 model=None,
                 custom_hooks=(),
                 max_epochs=2,
                 n=8,
                 batch_size=4,
                 lr=0.1,
                 checkpoint=None,
                 train_cfg=None,
                 img_size=8,
                 drop_last=False,
                 **kwargs) -> Runner:
    """A Runner training ``model`` (a ToyNet by default) on ToyDataset."""
    return Runner(
        model=model if model is not None else ToyNet(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyDataset(n, img_size),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=batch_size,
            drop_last=drop_last,
            collate_fn=dict(type='default_collate'),
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9)),
        train_cfg=train_cfg or dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(
            checkpoint=checkpoint
            or dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(custom_hooks),
        default_scope='mmdet',
        experiment_name=f'test_{uuid.uuid4().hex}',
        **kwargs)


@pytest.fixture
def toy():
    """The helpers of this module, as a namespace for the tests."""

    class Namespace:
        pass

    ns = Namespace()
    ns.ToyNet, ns.ToyDataset, ns.InjectFault, ns.build_runner = \
        ToyNet, ToyDataset, InjectFault, build_runner
    ns.BackwardFaultBN = BackwardFaultBN
    return ns
