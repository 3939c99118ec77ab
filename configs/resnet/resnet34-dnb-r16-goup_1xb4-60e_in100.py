# DN paper, Table 3: ResNet-34 with DN-B (r=16, g=oup) at batch 4 for 60
# epochs (paper: 21.85M params, 3580.35M MAdds, test top-1 77.10).
_base_ = './resnet34-bn_1xb4-60e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g='oup')))
