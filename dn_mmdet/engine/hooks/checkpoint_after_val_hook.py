"""Save a validated epoch's checkpoint after its validation."""

from mmdet.registry import HOOKS
from mmengine.hooks import CheckpointHook


@HOOKS.register_module()
class CheckpointAfterValHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, with an epoch that the train loop
    validates saved after its validation instead of before it.

    ``CheckpointHook`` saves in ``after_train_epoch``, which runs before the
    epoch's validation. A run stopped between the two (killed, out of time)
    resumes from that checkpoint at the next epoch, so the epoch is never
    validated; stopped at the last epoch, the resumed run ends at once and
    its last metric is an earlier epoch's. Here such an epoch's checkpoint is
    written in ``after_val_epoch``, after the best checkpoint, once the
    epoch's metrics exist; a run stopped before that resumes from the epoch
    before, trains the epoch again (exactly as before, with
    :class:`EpochSeedHook`) and validates it. Other epochs are saved as
    ``CheckpointHook`` saves them, and so is every checkpoint's content:
    the same file names, ``meta`` (epoch, iteration), ``last_checkpoint``
    and ``max_keep_ckpts``.

    Takes ``CheckpointHook``'s arguments.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The epoch whose checkpoint waits for its validation, or None.
        self._waiting_epoch = None

    def after_train_epoch(self, runner) -> None:
        if not (self.by_epoch and _validates_this_epoch(runner)):
            super().after_train_epoch(runner)
            return
        if self.every_n_epochs(runner, self.interval, self.save_begin) or (
            self.save_last and self.is_last_train_epoch(runner)
        ):
            self._waiting_epoch = runner.epoch + 1

    def after_val_epoch(self, runner, metrics) -> None:
        super().after_val_epoch(runner, metrics)
        self._save_waiting(runner)

    # Where the loop did not validate after all (a dynamic interval, say),
    # the epoch is saved before anything else happens to the model.
    def before_train_epoch(self, runner) -> None:
        self._save_waiting(runner)

    def after_train(self, runner) -> None:
        self._save_waiting(runner)
        super().after_train(runner)

    def _save_waiting(self, runner) -> None:
        epoch, self._waiting_epoch = self._waiting_epoch, None
        if epoch is None:
            return
        runner.logger.info(f'Saving checkpoint at {epoch} epochs')
        self._save_checkpoint_with_step(
            runner, epoch, meta=dict(epoch=epoch, iter=runner.iter)
        )


def _validates_this_epoch(runner) -> bool:
    """Whether ``EpochBasedTrainLoop`` validates the epoch that ends now
    (its own condition, read in ``after_train_epoch``)."""
    loop = runner.train_loop
    epoch = runner.epoch + 1
    return (
        runner.val_loop is not None
        and epoch >= loop.val_begin
        and (epoch % loop.val_interval == 0 or epoch == loop.max_epochs)
    )
