"""Load the run's checkpoints with the project's weights-only loader."""

import contextlib
from typing import Optional

from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from dn_mmdet.utils.compat import safe_checkpoint_loading


@HOOKS.register_module()
class SafeCheckpointLoaderHook(Hook):
    """Make mmengine load ``load_from``, ``resume`` and ``Pretrained``
    checkpoints of plain paths with
    :func:`~dn_mmdet.utils.compat.load_from_local` from ``before_run`` to
    ``after_run``.

    mmengine's own loader cannot read its runner's checkpoints under torch's
    weights-only default (they reference numpy and ``HistoryBuffer``);
    ``load_from_local`` allows exactly those globals, names a broken or
    refused file, and changes nothing else in the process. mmengine loads
    checkpoints after ``before_run`` (``load_or_resume``, and the weights
    init of ``train``), so the hook covers them; ``after_run`` puts the
    previous loader back. ``tools/train.py`` and ``tools/test.py`` do the
    same around the whole run (the hook then changes nothing).
    """

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self._loading: Optional[contextlib.ExitStack] = None

    def before_run(self, runner) -> None:
        if self._loading is None:
            self._loading = contextlib.ExitStack()
            self._loading.enter_context(safe_checkpoint_loading())

    def after_run(self, runner) -> None:
        if self._loading is not None:
            loading, self._loading = self._loading, None
            loading.close()
