# Runtime defaults of dn_mmdet: mmdet 3.x's, plus checkpoints that never lose
# work (atomic writes, one every epoch, several kept) and per-epoch seeding so
# that a killed and resumed run ends exactly where an uninterrupted one does.
default_scope = 'mmdet'
custom_imports = dict(imports=['dn_mmdet'], allow_failed_imports=False)

default_hooks = dict(
    # Checkpoints load with dn_mmdet's weights-only loader during the run
    # (mmengine's own cannot read its checkpoints under torch's default).
    safe_checkpoint_loader=dict(type='SafeCheckpointLoaderHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        # mmengine's CheckpointHook, but an epoch that is validated is saved
        # after its validation: a run stopped in between resumes there and
        # validates it, instead of skipping it.
        type='CheckpointAfterValHook',
        interval=1,
        # CheckpointHook deletes the oldest kept checkpoint *before* writing
        # the next one, so keep at least 2: a crash during that write must
        # leave a complete checkpoint behind.
        max_keep_ckpts=3,
        save_last=True,
        # dn_mmdet.utils.atomic_backend: temp file + fsync + os.replace, so an
        # interrupted write never leaves a truncated checkpoint.
        backend_args=dict(backend='atomic_local'),
    ),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Seeds random/numpy/torch with f(seed, epoch, rank) before each epoch
    # (mmengine does not restore augmentation RNG state on resume). A default
    # hook rather than a custom one, so configs that set custom_hooks keep it.
    epoch_seed=dict(type='EpochSeedHook'),
    # Stop at the first NaN/Inf, name the layer, never checkpoint it.
    nonfinite_check=dict(type='NonFiniteCheckHook'),
    # A norm layer seeing one value per channel in training fails clearly.
    norm_input_check=dict(type='NormInputCheckHook'),
    # load_from / resume / tools/test.py refuse a checkpoint of another
    # model; allow_partial=True loads what matches (mmengine's default).
    checkpoint_match=dict(type='CheckpointMatchHook', allow_partial=False),
    # DN applies the clamp of its ConvModule in its own output pass, where
    # that provably computes the same (dn_mmdet.norm.fuse_norm_act).
    fuse_norm_act=dict(type='FuseNormActHook'),
    visualization=dict(type='DetVisualizationHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py and tools/test.py switch to 'gloo' when CUDA is absent.
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer'
)
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
