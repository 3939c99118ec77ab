# MobileNetV2 1.0 classifier of the paper's ImageNet-100 tables (global
# average pooling, a linear head). Its backbone is the detector's own
# MobileNetV2DN, so a stage-1 checkpoint's backbone.* keys are exactly those
# the detector's backbone loads (strictly, through its init_cfg).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='MobileNetV2DN',
        out_taps=('conv_last',),
        # As the detector (FNA) and DenseNAS: eps 1e-3 in every norm layer.
        norm_cfg=dict(type='BN', eps=1e-3),
        act_cfg=dict(type='ReLU6'),
    ),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=100,
        in_channels=1280,
        # DenseNAS: label smoothing 0.1, (1 - 0.1) * one_hot + 0.1 / classes.
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'
        ),
        topk=(1, 5),
    ),
)
