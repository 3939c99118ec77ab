# Runtime of the stage-1 classifiers (mmpretrain): dn_mmdet's runtime (atomic
# checkpoints every epoch, per-epoch seeding, non-finite and norm-input
# checks) under mmpretrain's registries, keeping the best checkpoint.
_base_ = './default_runtime.py'

default_scope = 'mmpretrain'

default_hooks = dict(
    # 'auto': the first metric of the val evaluator, accuracy/top1.
    checkpoint=dict(type='mmdet.CheckpointAfterValHook', save_best='auto'),
    # dn_mmdet's hooks live in mmdet's registry; the scope prefix finds them
    # from the mmpretrain scope.
    safe_checkpoint_loader=dict(type='mmdet.SafeCheckpointLoaderHook'),
    epoch_seed=dict(type='mmdet.EpochSeedHook'),
    nonfinite_check=dict(type='mmdet.NonFiniteCheckHook'),
    norm_input_check=dict(type='mmdet.NormInputCheckHook'),
    checkpoint_match=dict(type='mmdet.CheckpointMatchHook'),
    # DN applies the clamp of its ConvModule in its own output pass, where
    # that provably computes the same (dn_mmdet.norm.fuse_norm_act).
    fuse_norm_act=dict(type='mmdet.FuseNormActHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)

visualizer = dict(type='UniversalVisualizer')
