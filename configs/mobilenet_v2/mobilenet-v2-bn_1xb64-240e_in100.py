# DN paper, Tables 1, 2, 4 and 8: MobileNetV2 1.0 with BN on ImageNet-100,
# batch 64, 240 epochs, lr 0.2 (paper: 2.35M params, 299.62M MAdds, test
# top-1 82.50). The other MobileNetV2 rows inherit this file (or the row of
# their batch / lr setting) and change only what their table varies.
_base_ = [
    '../_base_/models/mobilenet_v2_dn_cls.py',
    '../_base_/datasets/imagenet100_bs64.py',
    '../_base_/schedules/in100_bs64_coslr_240e.py',
    '../_base_/default_runtime_cls.py',
]
