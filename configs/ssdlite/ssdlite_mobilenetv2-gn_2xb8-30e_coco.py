# Ablation: the GN detector with 8 images a GPU (lr scaled linearly).
_base_ = './ssdlite_mobilenetv2-bn_2xb8-30e_coco.py'

model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=8)))
