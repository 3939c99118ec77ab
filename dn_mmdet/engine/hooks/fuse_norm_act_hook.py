"""Fuse DN layers with the clamp after them before a run starts."""

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from dn_mmdet.norm import fuse_norm_act

from .utils import unwrap_model


@HOOKS.register_module()
class FuseNormActHook(Hook):
    """Apply :func:`~dn_mmdet.norm.fuse_norm_act` to the runner's model
    before training, validation or testing: each ``ConvModule`` whose DN
    layer feeds its ReLU / ReLU6 / Hardtanh gets the clamp in DN's output
    pass, where that provably computes the same (outputs, gradients and
    checkpoint keys unchanged). A model without DN layers is left as it is.
    In ``configs/_base_/default_runtime.py``; remove it with
    ``default_hooks.fuse_norm_act=None``.
    """

    priority = 'VERY_HIGH'  # before any other hook looks at the modules

    def before_run(self, runner) -> None:
        fused = fuse_norm_act(unwrap_model(runner.model))
        if fused:
            print_log(
                f'FuseNormActHook: {fused} DN layers apply their '
                "ConvModule's clamp",
                logger='current',
            )
