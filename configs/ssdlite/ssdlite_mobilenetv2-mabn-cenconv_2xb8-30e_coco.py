# Ablation: 8 images a GPU (lr scaled linearly), the small batch MABN is
# for: its moving averages span real_batch_size // batch_size = 8
# iterations, standing in for the paper's 64 images a GPU.
_base_ = './ssdlite_mobilenetv2-bn_2xb8-30e_coco.py'

model = dict(
    backbone=dict(
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=8, real_batch_size=64),
    )
)
