"""Name the norm layer that would normalise one value per channel."""

from typing import Optional, Tuple

import torch.distributed as dist
import torch.nn as nn
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from torch.nn.modules.batchnorm import _BatchNorm

from dn_mmdet.norm.base import NormLayer, name_norm_layers

from .utils import unwrap_model


def batch_statistics_rule(module: nn.Module) -> Optional[Tuple[int, int]]:
    """``(processes pooling the statistics, values per channel they need)``
    if ``module`` normalises with batch statistics now, else None.

    A :class:`NormLayer` answers for itself; for torch's BN this is
    ``F.batch_norm``'s rule (batch statistics in training, or always without
    running statistics; a SyncBatchNorm pools over its process group).
    """
    if isinstance(module, NormLayer):
        if not module.uses_batch_statistics:
            return None
        return module.synced_processes(), module.min_values_per_channel
    if not module.training and module.running_mean is not None:
        return None
    processes = 1
    if (
        isinstance(module, nn.SyncBatchNorm)
        and dist.is_available()
        and dist.is_initialized()
    ):
        processes = dist.get_world_size(module.process_group)
    return processes, 2


@HOOKS.register_module()
class NormInputCheckHook(Hook):
    """Fail clearly, before any update, when a norm layer in training would
    see one value per channel.

    The project's norm layers (:class:`NormLayer`: DN, SN, MABN) check their
    own input and name themselves once ``before_run`` has set their names.
    torch's BatchNorm only says "Expected more than 1 value per channel
    when training": for BN layers (those outside a NormLayer) a forward
    pre-hook raises a ``ValueError`` naming the layer, its input shape and
    the config keys to change.

    Batch size 1 fails at once; a last, incomplete batch of one sample would
    fail only at the end of the first epoch, losing it. So during the first
    iteration the hook notes the first layer that a single sample could not
    feed (1x1 maps) and, if the sampler leaves one sample for the last batch,
    raises right after that iteration.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._handles: list = []
        self._probing = False
        self._fails_on_one_sample: Optional[str] = None

    def before_run(self, runner) -> None:
        name_norm_layers(unwrap_model(runner.model))

    def before_train(self, runner) -> None:
        inside_norm_layer = ()
        for name, module in unwrap_model(runner.model).named_modules():
            if isinstance(module, NormLayer):
                inside_norm_layer += (name + '.',)
            elif not isinstance(module, _BatchNorm) or name.startswith(
                inside_norm_layer
            ):
                continue
            self._handles.append(
                module.register_forward_pre_hook(self._check(name))
            )
        self._probing = True

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ) -> None:
        if not self._probing:
            return
        self._probing = False
        if not isinstance(runner.train_loop, EpochBasedTrainLoop):
            return  # an infinite sampler has no last batch
        loader = runner.train_dataloader
        sampler, batch_size = (
            loader.batch_sampler.sampler,
            loader.batch_sampler.batch_size,
        )
        if (
            self._fails_on_one_sample
            and not loader.batch_sampler.drop_last
            and batch_size > 1
            and len(sampler) % batch_size == 1
        ):
            raise ValueError(
                f'The last batch of every epoch will hold 1 sample '
                f'({len(sampler)} samples a process in batches of '
                f'{batch_size}), too few for the batch statistics of '
                f'`{self._fails_on_one_sample}`, which sees 1x1 maps: '
                'training would fail at the end of the epoch. Set '
                '`train_dataloader.drop_last=True` (or '
                '`train_dataloader.batch_sampler.drop_last=True`), or '
                'change `train_dataloader.batch_size`.'
            )

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _check(self, name: str):

        def check(module: nn.Module, args: tuple) -> None:
            rule = batch_statistics_rule(module)
            if rule is None or not args or args[0].dim() < 2:
                return
            x = args[0]
            if x.shape[0] == 0:  # an empty batch normalises nothing
                return
            processes, needed = rule
            per_sample = x[0, 0].numel() * processes
            if (
                self._probing
                and not self._fails_on_one_sample
                and per_sample < needed
            ):
                self._fails_on_one_sample = name
            values = x.shape[0] * per_sample
            if isinstance(module, _BatchNorm) and values < needed:
                raise ValueError(
                    f'`{name}` ({type(module).__name__}) got an input of '
                    f'shape {tuple(x.shape)} in training, {values} value(s) '
                    f'per channel, but batch statistics need at least '
                    f'{needed}. Raise `train_dataloader.batch_size` to 2 or '
                    'more, or set `train_dataloader.drop_last=True` if this '
                    'is the last, incomplete batch of an epoch; or freeze '
                    'the statistics (`norm_eval=True` in the backbone).'
                )

        return check
