# FNA's SSDLite (BN) on the embedded synthetic shapes data, sized to train
# and evaluate from scratch on a 2-core CPU in minutes. The model is the
# paper's (same backbone, neck, head and losses); only the data, the input
# size (and with it the anchors), two training settings of the head (below),
# the schedule and the optimiser differ.
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

input_size = 128
# FNA's anchors (SSD300 rule: min 30..276, max 60..330 for 300) scaled by
# input_size / 300; strides = input_size / feature size (8, 4, 2, 1, 1, 1).
model = dict(
    bbox_head=dict(
        num_classes=5,
        anchor_generator=dict(
            _delete_=True,
            type='SSDAnchorGenerator',
            scale_major=False,
            strides=[16, 32, 64, 128, 128, 128],
            ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            min_sizes=[13, 26, 49, 72, 95, 118],
            max_sizes=[26, 49, 72, 95, 118, 141],
        ),
        # FNA normalises the class logits, so only the norm's shift can set
        # the background offset, and AdamW moves it ~lr a step: from FNA's
        # zero init it takes the whole short schedule (see FNASSDLiteHead).
        # Start every anchor as background with probability 0.99 instead.
        cls_prior_prob=0.01,
    ),
    # At 128 px, SSD's IoU >= 0.5 matching finds no anchor for 54% of the
    # shapes (they get only the forced best match): 0.93 positives an object
    # on average; at 0.4 it is 2.5, so a short CPU run learns from 2.7x as
    # many positives (first version of the shapes data, val split; mAP after
    # 4 of 6 epochs 0.028 vs 0.015).
    train_cfg=dict(assigner=dict(pos_iou_thr=0.4, neg_iou_thr=0.4)),
)

dataset_type = 'ShapesDataset'
data_root = 'data/shapes/'
# Short training: flip only. FNA's expand / min-IoU crop shrink and cut
# objects and its colour jitter slows early learning, which a from-scratch
# model cannot afford in a few hundred iterations (the shapes already come in
# random colours on random backgrounds).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=(
            'img_id',
            'img_path',
            'ori_shape',
            'img_shape',
            'scale_factor',
        ),
    ),
]
# One loader process beside the main one: the machine has two cores.
# Non-persistent workers restart each epoch, so EpochSeedHook can reseed
# them and a resumed run augments exactly as an uninterrupted one.
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
        eta_min=0,
    ),
]
# AdamW at 5e-3 learned fastest from scratch of 2.5e-3, 5e-3 and 1e-2
# (6-epoch runs, mAP 0.006 / 0.015 / 0.000 after 4 epochs).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # Plain-dict parameter groups: compile=... in a config can then trace
    # the optimizer step (same optimizer, same numbers).
    constructor='PlainParamGroupsOptimWrapperConstructor',
    # fused: torch's one-kernel AdamW, the same update (equal to its
    # per-tensor loop up to float rounding); the loop over SSDLite's 316
    # tensors was 5-12% of a CPU step.
    optimizer=dict(type='AdamW', lr=5e-3, weight_decay=1e-4, fused=True),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
auto_scale_lr = dict(base_batch_size=16)

default_hooks = dict(
    logger=dict(interval=10),
    # After 2 warm-up and 10 measured iterations (or a minute), one log line
    # with the run's expected duration: the main job takes 14 min on an idle
    # 2-core machine and about 50 on a slower one.
    expected_duration=dict(type='ExpectedDurationHook'),
)
