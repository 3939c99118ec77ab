"""Replay a training batch to find the first module with a non-finite output.

Used by :class:`~dn_mmdet.engine.hooks.NonFiniteCheckHook` once training has
failed; nothing here runs while training goes well.
"""

from typing import Iterator, List

import torch
import torch.nn as nn

from dn_mmdet.norm.base import NormLayer


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _finite(obj) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in _tensors(obj)
        if t.is_floating_point()
    )


def _enclosing_norm_layer(model: nn.Module, name: str) -> str:
    """The innermost :class:`NormLayer` whose sub-module ``name`` is."""
    parts = name.split('.')
    for end in range(len(parts) - 1, 0, -1):
        prefix = '.'.join(parts[:end])
        if isinstance(model.get_submodule(prefix), NormLayer):
            return prefix
    return ''


def replay_forward(model: nn.Module, data_batch, optim_wrapper) -> List[str]:
    """Run ``data_batch`` through ``model`` as training does (same autocast),
    and say where the first non-finite value appears.

    The first module to *finish* with a non-finite output is where the value
    appeared: its sub-modules finished before it with finite outputs, and so
    did every module before it.

    Args:
        model (nn.Module): The unwrapped model (a mmengine ``BaseModel``).
        data_batch: The batch of the failed iteration.
        optim_wrapper (OptimWrapper): Its ``optim_context`` is entered, as
            in ``train_step``.

    Returns:
        list[str]: The findings, as sentences.
    """
    first: List[str] = []

    def hook(name):

        def check(module, args, output):
            if not first and not _finite(output):
                first.append(name)

        return check

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(data_batch, True)
            if not _finite(data.get('inputs')):
                return [
                    'The input batch is non-finite after the data '
                    'preprocessor: check the data set and the pipeline.'
                ]
            losses = model._run_forward(data, mode='loss')
    finally:
        for handle in handles:
            handle.remove()
    if not first:
        if _finite(losses):
            return [
                'Replaying the batch gives a finite forward pass and '
                'loss: the fault is in the backward pass.'
            ]
        return [
            'Every module output of the replayed forward pass is '
            'finite; the loss computation is not (check the annotations '
            'and the loss settings).'
        ]
    name = first[0]
    module = model.get_submodule(name)
    layer = _enclosing_norm_layer(model, name)
    inside = f', inside norm layer `{layer}`' if layer else ''
    findings = [
        f'It first appears in the forward pass at `{name}` '
        f'({type(module).__name__}{inside}): the first module whose output '
        'is non-finite.'
    ]
    if not _finite(list(module.parameters(recurse=False))):
        findings.append(
            "That module's own parameters are non-finite: a "
            'non-finite update was already applied, so this is '
            'where the damage shows, not necessarily where it '
            'started.'
        )
    return findings
