# The paper's stage-1 recipe: batch 64, 240 epochs, lr 0.2 (DN Tables 1-8).
# Not stated there, taken from DenseNAS (configs/imagenet_train_cfg.py, the
# code base the paper names): SGD with momentum 0.9, weight decay 4e-5 on all
# parameters, cosine decay per iteration to min_lr 1e-5, no warm-up, label
# smoothing 0.1 (in the model's head).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.2, momentum=0.9, weight_decay=4e-5)
)

# A dict, not a list, so that rows with other epoch counts change T_max/end.
param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=240,
    eta_min=1e-5,
    by_epoch=True,
    begin=0,
    end=240,
    convert_to_iter_based=True,
)

# Top-1/top-5 on the val split every 5 epochs (the runtime keeps the best).
train_cfg = dict(by_epoch=True, max_epochs=240, val_interval=5)
val_cfg = dict()
test_cfg = dict()

# The paper's batch of 64 in total; --auto-scale-lr scales the lr linearly
# for another total batch size.
auto_scale_lr = dict(base_batch_size=64)
