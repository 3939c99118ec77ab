"""Log once, early, how long the training will take."""

import time

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop


def _human(seconds: float) -> str:
    if seconds < 60:
        return f'{seconds:.1f} s'
    if seconds < 3600:
        return f'{seconds / 60:.0f} min'
    return f'{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min'


@HOOKS.register_module()
class ExpectedDurationHook(Hook):
    """After a few training iterations, log the run's expected duration.

    The time per iteration is measured over ``measure_iters`` iterations
    (or ``max_seconds``, whichever ends first) after ``skip_iters`` warm-up
    ones (the first iterations start the data loader's workers and allocate
    the activations), then one line is logged::

        expected duration: ~13 min for 2380 iterations at 0.31 s/iter
        (+ validation every 2 epochs), about 12 min left

    The estimate counts the time since training started in this process
    plus the remaining iterations at the measured rate (a resumed run counts
    only what is left). Validation, checkpoints and the data loader's
    restart at each epoch come on top.

    Args:
        skip_iters (int): Warm-up iterations not measured. Default: 2.
        measure_iters (int): Iterations measured. Default: 10.
        max_seconds (float): Log as soon as this much time was measured,
            however few iterations that is (a slow machine learns its
            duration early). Default: 60.
    """

    priority = 'VERY_LOW'

    def __init__(
        self,
        skip_iters: int = 2,
        measure_iters: int = 10,
        max_seconds: float = 60.0,
    ) -> None:
        if skip_iters < 0 or measure_iters < 1 or max_seconds <= 0:
            raise ValueError(
                'ExpectedDurationHook needs skip_iters >= 0, measure_iters '
                f'>= 1 and max_seconds > 0, got {skip_iters}, '
                f'{measure_iters} and {max_seconds}'
            )
        self.skip_iters = skip_iters
        self.measure_iters = measure_iters
        self.max_seconds = max_seconds

    def before_train(self, runner) -> None:
        self._train_start = self._start = time.perf_counter()
        self._iters = 0
        self._logged = False

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        if self._logged:
            return
        now = time.perf_counter()
        self._iters += 1
        measured = self._iters - self.skip_iters
        if measured <= 0:
            self._start = now
            return
        left_iters = runner.max_iters - runner.iter - 1
        if (
            measured < self.measure_iters
            and left_iters > 0
            and now - self._start < self.max_seconds
        ):
            return
        per_iter = (now - self._start) / measured
        left = left_iters * per_iter
        loop = runner.train_loop
        validation = ''
        if getattr(runner, '_val_loop', None) is not None:
            unit = (
                'epochs'
                if isinstance(loop, EpochBasedTrainLoop)
                else 'iterations'
            )
            validation = f' (+ validation every {loop.val_interval} {unit})'
        runner.logger.info(
            f'expected duration: ~{_human(now - self._train_start + left)} '
            f'for {runner.max_iters} iterations at {per_iter:.3g} s/iter'
            f'{validation}, about {_human(left)} left'
        )
        self._logged = True
