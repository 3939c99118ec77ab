# Stage 1 on the CPU: the paper's MobileNetV2-BN classifier (the detector's
# own backbone, GAP, linear head) on the embedded shape crops
# (tools/misc/make_shapes_cls_dataset.py: 5 classes, 64x64), sized to train
# in minutes on 2 cores. Its checkpoint starts the shapes detector
# (configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu-pretrained_shapes.py).
# As the ImageNet-100 row but for the data, the input size and the schedule.
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

input_size = 64
model = dict(head=dict(num_classes=5))
# The detector's normalisation (FNA: mean subtraction, std 1), not
# DenseNAS's: a DN-B stem's SC-Module then sees in the detector the input
# scale it was trained on (BN layers do not care, they are scale-invariant).
data_preprocessor = dict(num_classes=5, std=[1.0, 1.0, 1.0])

dataset_type = 'CustomDataset'
data_root = 'data/shapes_cls/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=input_size,
        crop_ratio_range=(0.5, 1.0),
        backend='pillow',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=input_size, backend='pillow'),
    dict(type='PackInputs'),
]
# One loader process beside the main one: the machine has two cores.
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        ann_file='meta/train.txt',
        data_prefix='',
        classes=data_root + 'meta/classes.txt',
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        ann_file='meta/val.txt',
        data_prefix='',
        classes=data_root + 'meta/classes.txt',
        pipeline=test_pipeline,
    ),
)
# No separate test split: tools/test.py reports top-1 on the val split.
test_dataloader = val_dataloader
# Five classes: top-5 would always be 100%.
val_evaluator = dict(topk=(1,))
test_evaluator = val_evaluator

max_epochs = 6
# AdamW at 2e-3 for BN and DN-B alike. The paper's SGD (lr 0.1 for batch
# 32) left the loss at chance (1.61) through the first epoch; AdamW 5e-3
# made DN-B's SC-Modules drive the generated scale of conv_last towards 0
# (Adam moves every SC weight by ~lr a step, whatever its gradient); 2e-3
# learns with both (README, "Stage 1 on the CPU").
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=1e-4)
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=1e-5,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(logger=dict(interval=20))
