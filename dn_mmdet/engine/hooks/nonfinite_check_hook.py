"""Stop training at the first NaN / Inf, name where it appeared, and never
checkpoint it."""

import os.path as osp
from typing import Optional

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper, OptimWrapperDict

from .nonfinite_replay import replay_forward
from .utils import describe_tensors, non_finite_tensors, unwrap_model

ADVICE = (
    'What to do: lower the learning rate (`optim_wrapper.optimizer.lr`) or '
    'lengthen the warm-up (`param_scheduler`), or clip gradients '
    '(`optim_wrapper.clip_grad=dict(max_norm=10)`); check the data. DN-C '
    "(`mode='C1'/'C2'`) diverges in MobileNetV2, as the DN paper "
    'reports: use DN-B. Then resume from the last good checkpoint.'
)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or Inf (raised by
    :class:`NonFiniteCheckHook`)."""


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop training at the first non-finite loss or gradient, name the first
    module whose output was non-finite, and refuse to save a non-finite
    checkpoint.

    What is checked:

    * every gradient, before each optimizer step (an optimizer step
      pre-hook; one fused norm a step), so a non-finite update is never
      applied (fp16 AMP steps that the loss scaler skips are its business);
    * the losses, after every iteration;
    * every tensor of a checkpoint, before it is written (a non-finite
      running statistic leaves outputs and gradients finite);
    * the parameters and buffers once before training (a poisoned
      ``load_from``).

    On failure the batch is replayed (:func:`replay_forward`) to name the
    first module whose output is non-finite, e.g.
    ``backbone.stage3.1.depthwise_conv.dn``; if the forward pass is finite,
    the parameters with non-finite gradients are named instead. The
    :class:`NonFiniteError` also names the last good checkpoint: nothing is
    saved after the failure. (mmengine's ``CheckpointHook`` deletes its
    oldest kept checkpoint before writing a new one, so keep
    ``max_keep_ckpts >= 2``, as the project's runtime does.)
    """

    priority = 'VERY_HIGH'  # before other hooks act on an iteration

    def __init__(self) -> None:
        self._handles: list = []
        self._data_batch = None

    def before_train(self, runner) -> None:
        wrappers = (
            runner.optim_wrapper.values()
            if isinstance(runner.optim_wrapper, OptimWrapperDict)
            else [runner.optim_wrapper]
        )
        for wrapper in wrappers:
            if isinstance(wrapper, OptimWrapper):
                self._handles.append(
                    wrapper.optimizer.register_step_pre_hook(
                        lambda optimizer, args, kwargs: self._check_grads(
                            runner, optimizer, kwargs
                        )
                    )
                )
        model = unwrap_model(runner.model)
        bad = non_finite_tensors(model.state_dict(keep_vars=True).items())
        if bad:
            self._fail(
                runner,
                'before training started: non-finite '
                f'{describe_tensors(model, bad)} (the loaded '
                'checkpoint or the initialisation)',
            )

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._data_batch = data_batch

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ) -> None:
        losses = {
            k: torch.as_tensor(v, dtype=torch.float32)
            for k, v in (outputs or {}).items()
            if 'loss' in k and isinstance(v, (torch.Tensor, float))
        }
        bad = non_finite_tensors(losses.items())
        if bad:
            values = ', '.join(f'{k}={losses[k].item():.4g}' for k in bad)
            self._fail(
                runner,
                f'at iteration {runner.iter + 1}: the loss is '
                f'non-finite ({values})',
                replay=True,
            )

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('state_dict', {})
        bad = non_finite_tensors(state.items())
        if bad:
            self._fail(
                runner,
                'refusing to save a checkpoint: non-finite '
                f'{describe_tensors(unwrap_model(runner.model), bad)}',
            )

    def after_train(self, runner) -> None:
        self._remove_handles()

    def _remove_handles(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # Eager under torch.compile: mmengine's ``compile`` compiles the whole
    # ``train_step``, optimizer step and its pre-hooks included, and dynamo
    # cannot trace the runner or the optimizer's param_groups.
    @torch.compiler.disable
    def _check_grads(self, runner, optimizer, kwargs) -> None:
        if kwargs.get('found_inf') is not None:
            # A GradScaler hands still-scaled gradients to an optimizer that
            # skips Inf steps itself (e.g. fused Adam).
            return
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group['params']
            if p.grad is not None
        ]
        if not grads or torch.isfinite(_total_norm(grads)):
            return
        model = unwrap_model(runner.model)
        # Nearest the loss first: where the backward pass went wrong.
        bad = non_finite_tensors(
            (n, p.grad) for n, p in reversed(list(model.named_parameters()))
        )
        self._fail(
            runner,
            f'at iteration {runner.iter + 1}: non-finite gradients '
            'before the optimizer step (not applied); nearest the loss: '
            f'{describe_tensors(model, bad, limit=3)}',
            replay=True,
        )

    def _fail(self, runner, what: str, replay: bool = False) -> None:
        self._remove_handles()  # the replay must not call _check_grads
        lines = [f'Training stopped {what}.']
        if replay and self._data_batch is not None:
            try:
                lines += replay_forward(
                    unwrap_model(runner.model),
                    self._data_batch,
                    runner.optim_wrapper,
                )
            except Exception as err:  # locating is best effort
                lines.append(f'(Replaying the batch failed: {err!r})')
        lines += [last_good_checkpoint(runner.work_dir), ADVICE]
        message = '\n'.join(lines)
        runner.logger.error(message)
        raise NonFiniteError(message)


def _total_norm(tensors) -> torch.Tensor:
    """2-norm of all ``tensors``: non-finite iff one of them is (or beyond
    float32's range, which is divergence anyway)."""
    if hasattr(torch.nn.utils, 'get_total_norm'):  # torch >= 2.6: fused
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(
        torch.stack(
            [torch.linalg.vector_norm(t).float().cpu() for t in tensors]
        )
    )


def last_good_checkpoint(work_dir: str) -> str:
    """A sentence naming the newest checkpoint of ``work_dir``.

    ``CheckpointHook`` records a checkpoint in ``last_checkpoint`` only after
    writing it completely.
    """
    record: Optional[str] = None
    path = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(path):
        with open(path) as f:
            record = f.read().strip() or None
    if record is None:
        return 'No checkpoint had been saved; none was saved after this.'
    return (
        f'Nothing was saved after the failure: the newest checkpoint, '
        f'`{record}`, is the last good one.'
    )
