"""Fail clearly when a BN / DN layer would get one value per channel.

Batch normalisation in training needs at least two values per channel to
estimate a variance. torch only notices deep inside ``F.batch_norm``
("Expected more than 1 value per channel when training"), without saying
which layer or which setting is at fault, and the DN-B training path (which
computes its statistics itself) would normalise every value to 0 and carry
on silently. :class:`NormInputCheckHook` turns both into one
``ValueError`` that names the layer, the input shape and the config key to
change.

Decision: the check is made on the actual input of each layer (a forward
pre-hook), not on ``train_dataloader.batch_size`` alone. Whether a layer
sees a single value per channel depends on its spatial size as well as on
the batch: a batch of one image is fine for a BN on a 20x20 feature map and
fatal for the BN on SSDLite's 1x1 level, and layers frozen with
``norm_eval=True`` are not concerned at all. The pre-hook raises on the very
first forward of the offending layer, i.e. before any optimizer step.
One case would only surface at the end of an epoch: a last, incomplete batch
holding a single sample. It is predicted after the first iteration from the
sampler length and the spatial sizes the layers saw, and reported then.
"""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet.registry import HOOKS

__all__ = [
    'NormInputCheckHook', 'batch_stat_norm_layers', 'dn_types',
    'enclosing_norm_layer', 'unwrap_model', 'uses_batch_statistics'
]


def dn_types() -> Tuple[type, ...]:
    """The Dynamic Normalization layer classes, empty if not importable.

    Imported lazily so that this module does not depend on the import order
    of ``dn_mmdet`` sub-packages.
    """
    try:
        from dn_mmdet.norm import DynamicNorm2d
    except ImportError:  # the DN layer is optional for these hooks
        return ()
    return (DynamicNorm2d, )


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _is_synced_across_ranks(bn: nn.Module) -> bool:
    """Whether ``bn`` pools its batch statistics over several processes.

    A SyncBatchNorm with one value per channel on each of several ranks is
    legitimate: the statistics are computed over all of them.
    """
    return isinstance(bn, nn.SyncBatchNorm) and _world_size() > 1


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether a BN / DN layer normalises its input with batch statistics.

    Args:
        module (nn.Module): A ``_BatchNorm`` or a DN layer.

    Returns:
        bool: True in training mode (and for a BN without running
        statistics, which uses batch statistics in eval mode too), False
        when its statistics are pooled across ranks by SyncBatchNorm.
    """
    if isinstance(module, _BatchNorm):
        if _is_synced_across_ranks(module):
            return False
        return module.training or (module.running_mean is None
                                   and module.running_var is None)
    # DN keeps its running statistics in a child BN and follows that child's
    # mode (so a backbone's ``norm_eval`` freezes it); with ``sync_bn`` the
    # child is a SyncBatchNorm and DN pools its statistics across ranks.
    child = getattr(module, 'bn', None)
    if child is None:
        return module.training
    if _is_synced_across_ranks(child):
        return False
    return uses_batch_statistics(child)


def batch_stat_norm_layers(
        model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Yield ``(qualified name, module)`` of every BN and DN layer.

    A BN that is a child of a DN layer (its running-statistics holder) is
    skipped: the DN layer sees the same input first and is the layer the
    user configured.

    Args:
        model (nn.Module): The (unwrapped) model.
    """
    dn = dn_types()
    inside_dn: List[str] = []
    for name, module in model.named_modules():
        if dn and isinstance(module, dn):
            inside_dn.append(name + '.')
            yield name, module
        elif isinstance(module, _BatchNorm):
            if not any(name.startswith(prefix) for prefix in inside_dn):
                yield name, module


def enclosing_norm_layer(model: nn.Module, module_name: str) -> str:
    """The nearest DN layer containing ``module_name``, else the name itself.

    ``backbone.conv1.dn.bn`` (the statistics holder) is reported as
    ``backbone.conv1.dn``: that is the layer the config created.

    Args:
        model (nn.Module): The (unwrapped) model.
        module_name (str): Qualified name of a sub-module.
    """
    dn = dn_types()
    if not dn:
        return module_name
    parts = module_name.split('.')
    for end in range(len(parts), 0, -1):
        prefix = '.'.join(parts[:end])
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            continue
        if isinstance(module, dn):
            return prefix
    return module_name


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP wrapper (qualified names without
    ``module.``)."""
    return model.module if is_model_wrapper(model) else model


def _batch_size(runner: Runner) -> Optional[int]:
    """The training batch size a process, as built from
    ``train_dataloader.batch_size``."""
    loader = runner.train_dataloader
    batch_sampler = getattr(loader, 'batch_sampler', None)
    size = getattr(batch_sampler, 'batch_size', None)
    return size if size is not None else getattr(loader, 'batch_size', None)


@HOOKS.register_module()
class NormInputCheckHook(Hook):
    """Raise a clear ``ValueError`` when a BN / DN layer would normalise a
    single value per channel in training.

    Before training, every BN and DN layer of the model gets a forward
    pre-hook that computes ``x.numel() // x.shape[1]`` (shape arithmetic
    only, no device synchronisation) while the layer uses batch statistics.
    When that is 1 the hook raises, naming the layer, the input shape and
    ``train_dataloader.batch_size``. Empty inputs (0 values) are left
    alone: BN skips the statistics update for them.

    After the first iteration the hook also predicts the last batch of each
    epoch: if it will hold a single sample (``len(sampler) % batch_size ==
    1`` and ``drop_last`` is off) and a layer saw 1x1 feature maps, it
    raises then rather than after a full epoch.

    Args:
        check_last_batch (bool): Predict a failing last, incomplete batch
            after the first iteration. Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, check_last_batch: bool = True) -> None:
        self.check_last_batch = check_last_batch
        self._handles: list = []
        self._batch_size: Optional[int] = None
        # Values per sample and channel (H*W) each layer saw in the first
        # iteration; filled only while ``_probing`` is set.
        self._probing = False
        self._first_iter = False
        self._spatial: Dict[str, Tuple[int, Tuple[int, ...]]] = {}

    def before_train(self, runner: Runner) -> None:
        self._batch_size = _batch_size(runner)
        self._first_iter = True
        model = unwrap_model(runner.model)
        for name, module in batch_stat_norm_layers(model):
            self._handles.append(
                module.register_forward_pre_hook(self._make_check(name)))

    def before_train_iter(self,
                          runner: Runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        # Probe the first iteration of this run (also after a resume).
        self._probing = self.check_last_batch and self._first_iter
        self._first_iter = False

    def after_train_iter(self,
                         runner: Runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if self._probing:
            self._probing = False
            self._check_last_batch(runner)
            self._spatial.clear()

    def after_train(self, runner: Runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_check(self, name: str):

        def check(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            if x.dim() < 2 or x.shape[1] == 0:
                return
            if not uses_batch_statistics(module):
                return
            per_channel = x.numel() // x.shape[1]
            if per_channel == 1:
                raise ValueError(self._message(name, module, tuple(x.shape)))
            if self._probing and x.shape[0] > 0:
                spatial = per_channel // x.shape[0]
                if name not in self._spatial or \
                        spatial < self._spatial[name][0]:
                    self._spatial[name] = (spatial, tuple(x.shape))

        return check

    def _message(self, name: str, module: nn.Module, shape: Tuple[int,
                                                                  ...]) -> str:
        kind = type(module).__name__
        lines = [
            f'`{name}` ({kind}) got an input of shape {shape} in training: '
            'one value per channel, but batch statistics need at least two '
            '(torch reports "Expected more than 1 value per channel when '
            'training"; DN-B would normalise every value to 0).'
        ]
        batch = shape[0]
        if self._batch_size is not None and batch < self._batch_size:
            lines.append(
                'The config sets `train_dataloader.batch_size='
                f'{self._batch_size}` but this batch holds {batch} '
                'sample(s): it is the last, '
                'incomplete batch of the epoch. Drop it with `train_dataloader'
                '.batch_sampler.drop_last=True` (or `train_dataloader.'
                'drop_last=True` without a batch sampler), or pick a '
                'batch size that does not leave a single sample.')
        else:
            current = '' if self._batch_size is None else \
                f' (now {self._batch_size})'
            lines.append(
                f'Increase `train_dataloader.batch_size`{current} to at '
                'least 2, or freeze these statistics (e.g. `norm_eval=True` '
                'in the backbone) if a batch of one image is intended.')
        return '\n'.join(lines)

    def _check_last_batch(self, runner: Runner) -> None:
        """Raise now if the last batch of each epoch will fail."""
        batch_sampler = getattr(runner.train_dataloader, 'batch_sampler', None)
        sampler = getattr(batch_sampler, 'sampler', None)
        batch_size = getattr(batch_sampler, 'batch_size', None)
        if sampler is None or not batch_size or \
                getattr(batch_sampler, 'drop_last', False):
            return
        try:
            num_samples = len(sampler)
        except TypeError:  # infinite samplers have no length and no end
            return
        if batch_size < 2 or num_samples % batch_size != 1:
            return
        single = [(name, shape)
                  for name, (spatial, shape) in self._spatial.items()
                  if spatial == 1]
        if not single:
            return
        name, shape = single[0]
        module = unwrap_model(runner.model).get_submodule(name)
        raise ValueError(
            f'The last batch of every epoch will hold 1 sample: this process '
            f'draws {num_samples} samples an epoch in batches of '
            f'{batch_size} (`train_dataloader.batch_size`) without '
            f'`drop_last`. `{name}` ({type(module).__name__}) sees 1x1 '
            f'feature maps (input {shape} in the first iteration), so that '
            'batch would have one value per channel and training would fail '
            'at the end of the epoch. Set `train_dataloader.batch_sampler.'
            'drop_last=True` (or `train_dataloader.drop_last=True` without a '
            'batch sampler), or change `train_dataloader.batch_size`.')
