# FNA's SSDLite (BN) on the embedded synthetic shapes data, sized to train
# and evaluate from scratch on a 2-core CPU in minutes. The model is the
# paper's (same backbone, neck, head and losses); only the data, the input
# size (and with it the anchors), the schedule and the optimiser differ.
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
            max_sizes=[26, 49, 72, 95, 118, 141])))

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
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
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
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
        end=100),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
        eta_min=0)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-3, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.))
auto_scale_lr = dict(base_batch_size=16)

default_hooks = dict(logger=dict(interval=10))
