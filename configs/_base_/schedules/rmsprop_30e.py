# The DN paper's SSDLite schedule (Sec. 4.3; FNA's code): RMSprop, 30 epochs
# (each = 5 passes over COCO train via RepeatDataset), linear warm-up over
# 500 iterations from lr/3, lr x0.1 at epochs 18, 25 and 28.
max_epochs = 30
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1
)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500
    ),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[18, 25, 28],
        gamma=0.1,
    ),
]

# torch's RMSprop with eps=1.0 as in FNA (TF-style damping of the
# denominator, which keeps the first steps small).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='RMSprop',
        lr=0.05,
        alpha=0.99,
        eps=1.0,
        momentum=0.9,
        weight_decay=4e-5,
    ),
)

# lr 0.05 is for 2 GPUs x 64 images; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=128)
