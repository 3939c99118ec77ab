# The BN baseline with Group Normalization in the backbone only, the
# standard batch-independent baseline. 8 groups: MobileNetV2 has 16- and
# 24-channel layers, which GN's usual 32 groups do not divide.
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=8)))
