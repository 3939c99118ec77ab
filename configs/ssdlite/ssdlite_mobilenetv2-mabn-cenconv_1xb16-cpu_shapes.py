# As the BN shapes config, with MABN and weight-centred convs in the backbone
# only (the pairing of the MABN paper). batch_size is B, the images one
# process sees an iteration (train_dataloader.batch_size); the moving
# averages span real_batch_size // batch_size = 2 iterations, i.e. 32 images,
# the reference's detection setting (B=2, real_B=32 there: 16 iterations).
# Warm-up and renormalisation as in the reference (100 and 1000 iterations
# of the 2,380).
_base_ = './ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'

model = dict(
    backbone=dict(
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=16, real_batch_size=32),
    )
)
