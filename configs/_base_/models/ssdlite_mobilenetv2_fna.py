# FNA's SSDLite on MobileNetV2: the DN paper's detector (Sec. 4.3, Table 5).
# Variants change ``model.backbone.norm_cfg`` only.
# FNA uses eps=1e-3 in every norm layer (and torch's default momentum 0.1).
norm_cfg = dict(type='BN', eps=1e-3)
model = dict(
    type='SingleStageDetector',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        # FNA subtracts the ImageNet mean but does not divide by the std.
        mean=[123.675, 116.28, 103.53],
        std=[1, 1, 1],
        bgr_to_rgb=True,
        pad_size_divisor=1,
    ),
    backbone=dict(
        type='MobileNetV2DN',
        # stride 16: expansion output (576 ch) of the first 160-ch block;
        # stride 32: the final 1x1 conv (1280 ch).
        out_taps=('stage6_expand', 'conv_last'),
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU6'),
    ),
    neck=dict(
        # mmdet's SSDNeck builds FNA's four extra layers exactly:
        # 1x1 conv to out/2 + norm + ReLU6, then depthwise 3x3 s2 + norm +
        # ReLU6 and pointwise 1x1 to out + norm + ReLU6.
        type='SSDNeck',
        in_channels=(576, 1280),
        out_channels=(576, 1280, 512, 256, 256, 128),
        level_strides=(2, 2, 2, 2),
        level_paddings=(1, 1, 1, 1),
        l2_norm_scale=None,
        use_depthwise=True,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU6'),
        init_cfg=[
            dict(type='Normal', layer='Conv2d', std=0.03),
            dict(type='Constant', layer='_BatchNorm', val=1, bias=0),
        ],
    ),
    bbox_head=dict(
        type='FNASSDLiteHead',
        num_classes=80,
        in_channels=(576, 1280, 512, 256, 256, 128),
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU6'),
        anchor_generator=dict(
            type='SSDAnchorGenerator',
            scale_major=False,
            # Anchor sizes of SSD300 (min 30..276, max 60..330) although the
            # network sees 320x320 images, as in FNA.
            input_size=300,
            basesize_ratio_range=(0.2, 0.95),
            strides=[16, 32, 64, 107, 160, 320],
            ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        ),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[0.1, 0.1, 0.2, 0.2],
        ),
    ),
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.5,
            min_pos_iou=0.0,
            ignore_iof_thr=-1,
            gt_max_assign_all=False,
        ),
        sampler=dict(type='PseudoSampler'),
        smoothl1_beta=1.0,
        allowed_border=-1,
        pos_weight=-1,
        neg_pos_ratio=3,
        debug=False,
    ),
    # No nms_pre: FNA keeps every anchor above score_thr for NMS.
    test_cfg=dict(
        nms=dict(type='nms', iou_threshold=0.6),
        min_bbox_size=0,
        score_thr=0.02,
        max_per_img=200,
    ),
)
