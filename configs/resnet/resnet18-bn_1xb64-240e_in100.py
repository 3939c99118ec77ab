# DN paper, Table 3: ResNet-18 with BN on ImageNet-100, batch 64, 240 epochs,
# lr 0.2 (paper: 11.22M params, 1730.12M MAdds, test top-1 85.00). The
# network is mmpretrain's own ResNet-18 config with a 100-class head; data,
# schedule and label smoothing as the MobileNetV2 rows (DenseNAS's recipe).
# The other ResNet rows inherit this file and change what Table 3 varies.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    '../_base_/datasets/imagenet100_bs64.py',
    '../_base_/schedules/in100_bs64_coslr_240e.py',
    '../_base_/default_runtime_cls.py',
]

model = dict(
    head=dict(
        num_classes=100,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'
        ),
    )
)
