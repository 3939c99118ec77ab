# ImageNet-100 (the DN paper's stage 1): the files written by
# tools/dataset_converters/imagenet100.py (no image copies; data/imagenet100/
# images links to the ImageNet root). train: 80% of each class's training
# images; val: the other 20%; test: the official validation images.
dataset_type = 'CustomDataset'
data_root = 'data/imagenet100/'

# DenseNAS (the paper's code base for ImageNet-100): torchvision's
# RandomResizedCrop 224 (scale 0.08-1) and horizontal flip, no colour jitter;
# test: short side 256, centre crop 224; ImageNet mean/std, RGB.
data_preprocessor = dict(
    num_classes=100,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.08, 1.0),
        backend='pillow',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

# Non-persistent workers restart each epoch, so EpochSeedHook reseeds them
# and a resumed run augments as an uninterrupted one. drop_last: every step
# normalises with the statistics of a full batch (the batch-size rows compare
# exactly that).
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=False,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='train.txt',
        data_prefix='images',
        classes=data_root + 'classes.txt',
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='val.txt',
        data_prefix='images',
        classes=data_root + 'classes.txt',
        pipeline=test_pipeline,
    ),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='test.txt',
        data_prefix='images',
        classes=data_root + 'classes.txt',
        pipeline=test_pipeline,
    ),
)
test_evaluator = val_evaluator
