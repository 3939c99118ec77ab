"""Load the run's checkpoints with the project's weights-only loader."""

from typing import Optional

from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from dn_mmdet.utils.compat import safe_checkpoint_loading


@HOOKS.register_module()
class SafeCheckpointLoaderHook(Hook):
    """Make mmengine load ``load_from``, ``resume`` and ``Pretrained``
    checkpoints of plain paths with
    :func:`~dn_mmdet.utils.compat.load_from_local` while the runner loads
    them.

    mmengine's own loader cannot read its runner's checkpoints under torch's
    weights-only default (they reference numpy and ``HistoryBuffer``);
    ``load_from_local`` allows exactly those globals, names a broken or
    refused file, and changes nothing else in the process. mmengine loads
    checkpoints between ``before_run`` and the start of its loop (the
    weights init and ``load_or_resume``), so the hook switches the loader
    on in ``before_run`` and puts the previous one back when the first loop
    starts (``before_train`` / ``before_val`` / ``before_test``) or the run
    ends. A run whose loading raises leaves the hook no call to put it back:
    a program that goes on after such an error wraps the run in
    ``with safe_checkpoint_loading():`` as ``tools/train.py`` and
    ``tools/test.py`` do (the hook then changes nothing).
    """

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self._loading: Optional[safe_checkpoint_loading] = None

    def before_run(self, runner) -> None:
        if self._loading is None:
            self._loading = safe_checkpoint_loading()
            self._loading.__enter__()

    def _put_back(self) -> None:
        if self._loading is not None:
            loading, self._loading = self._loading, None
            loading.__exit__(None, None, None)

    def before_train(self, runner) -> None:
        self._put_back()

    def before_val(self, runner) -> None:
        self._put_back()

    def before_test(self, runner) -> None:
        self._put_back()

    def after_run(self, runner) -> None:
        self._put_back()
