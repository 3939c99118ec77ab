# DN paper, Table 3: ResNet-34 with DN-B (r=16, g=oup) at batch 64 for 240
# epochs (paper: 21.85M params, 3580.35M MAdds, test top-1 85.42).
_base_ = './resnet34-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g='oup')))
