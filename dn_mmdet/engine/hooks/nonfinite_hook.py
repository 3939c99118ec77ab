"""Stop training at the first NaN / Inf, say where it came from, and never
checkpoint a poisoned model.

What is checked, and when (cheapest first):

* the losses in ``outputs`` of ``after_train_iter``: every iteration;
* the gradients: at every optimizer step, from a ``step_pre_hook`` on the
  torch optimizer, so a non-finite gradient is caught *before* it is
  applied (one fused gradient-norm reduction a step). Under fp16 AMP the
  ``GradScaler`` skips steps with Inf gradients without calling
  ``optimizer.step``, so its normal overflow handling is not flagged;
* parameters and buffers (BN / DN running statistics included): every
  ``interval`` iterations, at the end of each epoch, before any by-iteration
  checkpoint, and at the start of training (after ``load_from`` /
  ``resume``).

Measured on the DN-B SSDLite (5.1M parameters, 316 tensors, batch 8 at
192x192, 2 CPU threads, ~2 s a step): the gradient check costs ~2 ms a step,
a full parameter / buffer scan 30-80 ms (every 50 iterations by default).

Only when one of these fails does the hook locate the origin, replaying the
same batch (same autocast) with hooks on every module: it reports the first
module, in execution order, whose output is non-finite (e.g.
``backbone.stage3.1.depthwise_conv.dn``); if the forward pass is finite, the
module whose backward pass first turns a finite gradient into a non-finite
one; else the parameters with non-finite gradients. Non-finite BN / DN
running statistics are listed under the layer that owns them.

Distributed training: each process checks its own values. Gradients are
all-reduced before the step, so a non-finite gradient stops every rank at
once; a rank-local failure stops that rank and torchrun then ends the
others.

Checkpoints. The hook has a higher priority than ``CheckpointHook`` and
raises from ``after_train_iter`` / ``after_train_epoch`` before it can save,
so the newest checkpoint on disk is the last good one (e.g. the previous
epoch's). ``before_save_checkpoint`` refuses, as a last line of defence, any
other save of a non-finite state dict. When the failure is caught before the
optimizer step the weights in memory are still those of the previous
iteration; when it is caught later (a loss or statistic without effect on
the gradients) this iteration's update has been applied, which is harmless
because the process stops without saving it.
"""
import contextlib
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.runner import Runner

from mmdet.registry import HOOKS
from .norm_input_check_hook import enclosing_norm_layer, unwrap_model

__all__ = ['NonFiniteCheckHook', 'NonFiniteError']

# How many offending tensors / modules a message lists.
_MAX_LISTED = 5

ADVICE = (
    'What to do: lower the learning rate (`optim_wrapper.optimizer.lr`) or '
    'lengthen the warm-up (`param_scheduler`), or clip gradients '
    '(`optim_wrapper.clip_grad=dict(max_norm=...)`); check the data for '
    'broken images or degenerate boxes; DN-C (`norm_cfg=dict(type=\'DN\', '
    'mode=\'C1\' or \'C2\')`) is known to diverge (the DN paper reports NaN '
    'with it in MobileNetV2): prefer DN-B (`mode=\'B\'`). See README, '
    '"Troubleshooting".')

_NOT_APPLIED = ('The non-finite gradient was not applied: the weights in '
                'memory are those of the previous iteration.')
_APPLIED = ('This iteration\'s update is applied in memory but was not saved.')


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or Inf (raised by
    :class:`NonFiniteCheckHook`)."""


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _all_finite(obj) -> bool:
    """Whether every floating tensor in a (nested) container is finite."""
    if isinstance(obj, torch.Tensor):
        return not _is_float(obj) or bool(torch.isfinite(obj).all())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(o) for o in obj)
    if isinstance(obj, dict):
        return all(_all_finite(o) for o in obj.values())
    return True


def non_finite_tensors(
        named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """Names of the non-finite tensors, in the given order.

    The per-tensor flags are computed on the tensors' devices and read with
    one synchronisation per device.

    Args:
        named_tensors (Iterable[tuple[str, Tensor]]): e.g.
            ``model.named_parameters()``.
    """
    names: List[str] = []
    flags: Dict[torch.device, List[Tuple[int, torch.Tensor]]] = \
        defaultdict(list)
    for name, tensor in named_tensors:
        if tensor is None or not _is_float(tensor):
            continue  # e.g. ``num_batches_tracked``
        flags[tensor.device].append((len(names), torch.isfinite(tensor).all()))
        names.append(name)
    bad: List[int] = []
    for entries in flags.values():
        ok = torch.stack([flag for _, flag in entries])
        if not bool(ok.all()):
            bad += [entries[i][0] for i in (~ok).nonzero().flatten().tolist()]
    return [names[i] for i in sorted(bad)]


def _optimizers(optim_wrapper) -> List[torch.optim.Optimizer]:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return [w.optimizer for w in optim_wrapper.values()]
    if isinstance(optim_wrapper, OptimWrapper):
        return [optim_wrapper.optimizer]
    return []


def _grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global 2-norm of ``grads``: non-finite iff any gradient is (or the
    norm overflows fp32, i.e. gradients beyond ~1e19: divergence anyway).

    fp32 / fp64 gradients go through torch's fused multi-tensor norm; others
    (fp16 / bf16 parameters) are reduced in fp32 so that an fp16 sum of
    squares cannot overflow on finite gradients.
    """
    full = [g for g in grads if g.dtype in (torch.float32, torch.float64)]
    low = [g for g in grads if g.dtype not in (torch.float32, torch.float64)]
    norms = []
    if full:
        if hasattr(torch.nn.utils, 'get_total_norm'):  # torch >= 2.6
            norms.append(
                torch.nn.utils.get_total_norm(full, error_if_nonfinite=False))
        else:
            norms += [torch.linalg.vector_norm(g) for g in full]
    norms += [torch.linalg.vector_norm(g, dtype=torch.float32) for g in low]
    device = norms[0].device
    return torch.linalg.vector_norm(
        torch.stack([n.float().to(device) for n in norms]))


def _loss_values(outputs) -> Dict[str, torch.Tensor]:
    """The loss entries (keys containing ``loss``) of ``train_step``'s
    log vars."""
    if not isinstance(outputs, dict):
        return {}
    values = {}
    for key, value in outputs.items():
        if 'loss' not in key:
            continue
        if isinstance(value, (int, float)):
            value = torch.tensor(float(value))
        if isinstance(value, torch.Tensor) and _is_float(value):
            values[key] = value.detach()
    return values


def _format_values(values: Dict[str, torch.Tensor]) -> str:
    return ', '.join(
        f'{k}={v.float().mean().item():.4g}' if v.numel() else f'{k}=<empty>'
        for k, v in values.items())


def _describe_tensors(model: nn.Module, names: List[str]) -> str:
    """Group tensor names by layer, e.g. ```backbone.conv1.dn`
    (DynamicNorm2d: `bn.running_mean`, `bn.running_var`), ...``.

    A tensor held by the statistics child of a DN layer is reported under
    the DN layer, the one the config created.
    """
    layers: Dict[str, List[str]] = {}
    for name in names:
        owner = name.rpartition('.')[0]
        layer = enclosing_norm_layer(model, owner) if owner else ''
        local = name[len(layer) + 1:] if layer else name
        layers.setdefault(layer, []).append(local)
    described = []
    for layer, tensors in list(layers.items())[:_MAX_LISTED]:
        module = model.get_submodule(layer) if layer else model
        listed = ', '.join(f'`{t}`' for t in tensors)
        described.append(f'`{layer or "<model>"}` '
                         f'({type(module).__name__}: {listed})')
    more = len(layers) - _MAX_LISTED
    return ', '.join(described) + (f' and {more} more layer(s)'
                                   if more > 0 else '')


def _image_paths(data_batch) -> List[str]:
    """``img_path`` of each sample of an mmdet batch, where recorded."""
    samples = data_batch.get('data_samples') if isinstance(data_batch,
                                                           dict) else None
    paths = []
    for sample in samples or []:
        path = getattr(sample, 'metainfo', {}).get('img_path')
        if path is not None:
            paths.append(str(path))
    return paths


def _tensors(obj) -> Iterable[torch.Tensor]:
    """The tensors of a (nested) container."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _innermost(names: List[str]) -> List[str]:
    """Drop the names of containers whose sub-modules are also listed."""
    return [
        n for n in dict.fromkeys(names)
        if not any(m.startswith(n + '.') for m in names)
    ]


class _Replay:
    """Re-run one training batch with hooks on every module.

    Forward: the first module, in order of completion, whose output is
    non-finite is where the value appeared (its sub-modules and all modules
    before it produced finite outputs).

    Backward: every tensor entering or leaving a module gets a gradient hook.
    Gradients are computed from the loss towards the input, so the first
    tensor, in time, whose gradient is non-finite locates the origin: its
    gradient was computed by the backward of the module(s) consuming it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.first_bad: Optional[str] = None
        # Gradient bookkeeping. A tensor is keyed by (id, version): an
        # in-place op (ReLU(inplace=True)) makes a new value in the same
        # object, consumed by other modules and with its own gradient.
        # events: (key, gradient finite), in the order they were computed.
        self._keys: Dict[Tuple[int, int], int] = {}
        self._alive: List[torch.Tensor] = []  # keeps ids unique
        self.consumers: Dict[int, List[str]] = defaultdict(list)
        self.producers: Dict[int, List[str]] = defaultdict(list)
        self.events: List[Tuple[int, bool]] = []

    def _track(self, tensor: torch.Tensor) -> Optional[int]:
        if not (tensor.requires_grad and _is_float(tensor)):
            return None
        ident = (id(tensor), tensor._version)
        key = self._keys.get(ident)
        if key is None:
            key = self._keys[ident] = len(self._keys)
            self._alive.append(tensor)

            def on_grad(grad, key=key):
                self.events.append((key, bool(torch.isfinite(grad).all())))

            # Bound to the current value: fires with the gradient of this
            # version even if the tensor is later modified in place.
            tensor.register_hook(on_grad)
        return key

    def _pre_hook(self, name: str):

        def pre_hook(module, args):
            if torch.is_grad_enabled():
                for t in _tensors(args):
                    key = self._track(t)
                    if key is not None:
                        self.consumers[key].append(name)

        return pre_hook

    def _hook(self, name: str):

        def hook(module, args, output):
            if self.first_bad is None and not _all_finite(output):
                self.first_bad = name
            if torch.is_grad_enabled():
                for t in _tensors(output):
                    key = self._track(t)
                    if key is not None:
                        self.producers[key].append(name)

        return hook

    def run(self, data_batch, optim_wrapper) -> List[str]:
        """Replay ``data_batch``; return the findings as message lines."""
        handles = []
        for name, module in self.model.named_modules():
            if name:
                handles.append(
                    module.register_forward_pre_hook(self._pre_hook(name)))
                handles.append(module.register_forward_hook(self._hook(name)))
        try:
            return self._run(data_batch, optim_wrapper)
        finally:
            for handle in handles:
                handle.remove()
            self._alive.clear()

    def _context(self, optim_wrapper):
        # The replay must see the same precision as training (AMP autocast).
        if isinstance(optim_wrapper, OptimWrapper):
            return optim_wrapper.optim_context(self.model)
        return contextlib.nullcontext()

    def _run(self, data_batch, optim_wrapper) -> List[str]:
        model = self.model
        with self._context(optim_wrapper):
            data = model.data_preprocessor(data_batch, True)
            inputs = data.get('inputs') if isinstance(data, dict) else data
            if not _all_finite(inputs):
                paths = _image_paths(data_batch)
                return [
                    'The input batch itself is non-finite after the data '
                    'preprocessor' +
                    (f' (images: {", ".join(paths)})' if paths else '') +
                    ': check the dataset and the pipeline.'
                ]
            if isinstance(data, dict):
                losses = model(**data, mode='loss')
            else:
                losses = model(*data, mode='loss')
        if self.first_bad is not None:
            return self._forward_finding()
        loss, log_vars = model.parse_losses(losses)
        bad_terms = {
            k: v
            for k, v in _loss_values(log_vars).items() if not _all_finite(v)
        }
        if bad_terms:
            return [
                'Every module output of the replayed forward pass is finite; '
                'the loss computation itself is not: '
                f'{_format_values(bad_terms)} (check the targets / '
                'annotations and the loss settings).'
            ]
        # Forward finite: replay the backward pass on fresh gradients.
        model.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        return self._backward_finding()

    def _forward_finding(self) -> List[str]:
        model = self.model
        module = model.get_submodule(self.first_bad)
        layer = enclosing_norm_layer(model, self.first_bad)
        inside = f', inside DN layer `{layer}`' if \
            layer != self.first_bad else ''
        findings = [
            'It first appears in the forward pass at '
            f'`{self.first_bad}` ({type(module).__name__}{inside}): the '
            'first module, in execution order, whose output is non-finite.'
        ]
        own = non_finite_tensors(module.named_parameters(recurse=False))
        if own:
            findings.append(
                f'That module\'s own parameters ({", ".join(own)}) are '
                'non-finite: a non-finite update has already been applied, '
                'so the replay shows where the damage is, not necessarily '
                'where it started.')
        return findings

    def _backward_finding(self) -> List[str]:
        model = self.model
        bad_grads = non_finite_tensors(
            (n, p.grad) for n, p in model.named_parameters())
        listed = (f' Non-finite parameter gradients: '
                  f'{_describe_tensors(model, bad_grads)}.'
                  if bad_grads else '')
        first = next((key for key, finite in self.events if not finite), None)
        if first is not None:
            consumers = _innermost(self.consumers.get(first, []))
            if consumers:
                where = ', '.join(
                    f'`{n}` ({type(model.get_submodule(n)).__name__})'
                    for n in consumers)
                return [
                    'The forward pass is finite; the gradient first becomes '
                    f'non-finite in the backward pass of {where}: the '
                    'gradient it receives is finite, the one it passes to its '
                    'input is not.' + listed
                ]
            producers = _innermost(self.producers.get(first, []))
            after = ', '.join(f'`{n}`' for n in producers) or 'the model'
            return [
                'The forward pass is finite; the gradient first becomes '
                'non-finite in the code between modules that consumes the '
                f'output of {after} (e.g. the loss computation).' + listed
            ]
        if bad_grads:
            return [
                'The forward pass and the gradients flowing between modules '
                'are finite; the gradients of some parameters are not.' +
                listed
            ]
        return [
            'Replaying this batch gives finite outputs and gradients: the '
            'failure did not reproduce (non-deterministic layers or an '
            'already applied update).'
        ]


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop training at the first non-finite loss, gradient, parameter or
    BN / DN statistic, naming the layer where it first appeared.

    See the module docstring for what is checked when. The error is a
    :class:`NonFiniteError` (a ``FloatingPointError``) whose message says
    what became non-finite, where it first appeared, which checkpoint is the
    last good one, and what to do.

    Args:
        interval (int): Check all parameters and buffers every ``interval``
            training iterations (they are also checked at the end of every
            epoch and before every checkpoint). The losses are checked every
            iteration. Defaults to 50.
        check_grads (bool): Check the global gradient norm before every
            optimizer step, which keeps a non-finite update from being
            applied. Costs one fused norm a step. Defaults to True.
        locate (bool): On failure, replay the batch to find the first layer
            where the non-finite value appeared. Defaults to True.
    """

    priority = 'VERY_HIGH'  # before EMAHook, LoggerHook and CheckpointHook

    def __init__(self,
                 interval: int = 50,
                 check_grads: bool = True,
                 locate: bool = True) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f'NonFiniteCheckHook: `interval` must be a positive int, got '
                f'{interval!r}')
        self.interval = interval
        self.check_grads = check_grads
        self.locate = locate
        self._runner: Optional[Runner] = None
        self._data_batch = None
        self._handles: list = []

    # ------------------------------------------------------------ hooks ---
    def before_train(self, runner: Runner) -> None:
        self._runner = runner
        if self.check_grads:
            for optimizer in _optimizers(runner.optim_wrapper):
                self._handles.append(
                    optimizer.register_step_pre_hook(self._before_step))
        # Catches a poisoned ``load_from`` / ``resume`` checkpoint or init.
        self._check_state(runner, at='before training started')

    def before_train_iter(self,
                          runner: Runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        self._data_batch = data_batch

    def after_train_iter(self,
                         runner: Runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        losses = _loss_values(outputs)
        if losses:
            flags = torch.stack(
                [torch.isfinite(v).all() for v in losses.values()])
            if not bool(flags.all()):
                self._fail(
                    runner,
                    f'the loss is non-finite: {_format_values(losses)}',
                    note=_APPLIED)
        if self.every_n_train_iters(runner, self.interval) or \
                self._iter_checkpoint_due(runner):
            self._check_state(runner, note=_APPLIED)
        self._data_batch = None

    def after_train_epoch(self, runner: Runner) -> None:
        # Runs before CheckpointHook (lower priority) saves this epoch.
        self._check_state(
            runner,
            at=f'at the end of epoch {runner.epoch + 1} (after iteration '
            f'{runner.iter})')

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        state = checkpoint.get('state_dict') or {}
        bad = non_finite_tensors(
            (k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
        if bad:
            listed = ', '.join(f'`{n}`' for n in bad[:_MAX_LISTED])
            raise NonFiniteError(
                f'Refusing to save a checkpoint with non-finite values in '
                f'{len(bad)} tensor(s): {listed}. {self._last_ckpt(runner)}'
                f'\n{ADVICE}')

    def after_train(self, runner: Runner) -> None:
        self._remove_handles()

    # ---------------------------------------------------------- helpers ---
    def _remove_handles(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: refuse to apply a non-finite gradient."""
        if kwargs.get('grad_scaler') is not None or \
                kwargs.get('found_inf') is not None:
            # A GradScaler hands still-scaled gradients to an optimizer that
            # skips Inf steps itself (``_step_supports_amp_scaling``, e.g.
            # fused Adam): Inf there is the scaler's business, not an error.
            return
        grads = [
            p.grad for group in optimizer.param_groups for p in group['params']
            if p.grad is not None
        ]
        if not grads:
            return
        norm = _grad_norm(grads)
        if not bool(torch.isfinite(norm)):
            self._fail(
                self._runner, f'the gradient is non-finite (global norm '
                f'{norm.item():.4g}) before the optimizer step',
                note=_NOT_APPLIED)

    def _iter_checkpoint_due(self, runner: Runner) -> bool:
        """Whether an iteration-based CheckpointHook saves after this
        iteration."""
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and not hook.by_epoch:
                if hook.every_n_train_iters(
                        runner, hook.interval,
                        hook.save_begin) or (hook.save_last and
                                             hook.is_last_train_iter(runner)):
                    return True
        return False

    def _check_state(self,
                     runner: Runner,
                     at: Optional[str] = None,
                     note: Optional[str] = None) -> None:
        """Fail if a parameter or buffer of the model is non-finite."""
        model = unwrap_model(runner.model)
        bad_params = non_finite_tensors(model.named_parameters())
        bad_buffers = non_finite_tensors(model.named_buffers())
        if not bad_params and not bad_buffers:
            return
        parts = []
        if bad_params:
            parts.append('parameters of '
                         f'{_describe_tensors(model, bad_params)}')
        if bad_buffers:
            parts.append('buffers (BN / DN running statistics) of '
                         f'{_describe_tensors(model, bad_buffers)}')
        self._fail(runner, f'non-finite {" and ".join(parts)}', note, at)

    @staticmethod
    def _last_ckpt(runner: Runner) -> str:
        last = runner.message_hub.get_info('last_ckpt')
        if last:
            return (f'Nothing was saved after the failure: the latest '
                    f'checkpoint, `{last}`, is the last good one.')
        return 'No checkpoint had been saved yet, and none was saved.'

    def _fail(self,
              runner: Runner,
              what: str,
              note: Optional[str] = None,
              at: Optional[str] = None) -> None:
        """Locate the origin (optional) and raise :class:`NonFiniteError`.

        Args:
            runner (Runner): The runner.
            what (str): What was found non-finite.
            note (str, optional): What this means for the weights in memory.
            at (str, optional): When; defaults to the current iteration.
        """
        self._remove_handles()  # the replay may call the optimizer's hooks
        if at is None:
            at = f'at iteration {runner.iter + 1} (epoch {runner.epoch + 1})'
        lines = [f'Training stopped {at}: {what}.']
        model = unwrap_model(runner.model)
        if self.locate and self._data_batch is not None:
            # The DN / BN statistics as they are now, before the replay
            # updates them again.
            stats = non_finite_tensors(model.named_buffers())
            try:
                lines += _Replay(model).run(self._data_batch,
                                            runner.optim_wrapper)
            except Exception as e:  # locating is best effort
                lines.append(f'(Replaying the batch to locate the origin '
                             f'failed: {type(e).__name__}: {e})')
            if stats:
                lines.append('Non-finite running statistics: '
                             f'{_describe_tensors(model, stats)}.')
        if note:
            lines.append(note)
        lines.append(self._last_ckpt(runner))
        lines.append(ADVICE)
        runner.logger.error('\n'.join(lines))
        raise NonFiniteError('\n'.join(lines))
