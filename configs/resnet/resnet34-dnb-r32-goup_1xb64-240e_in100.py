# DN paper, Table 3: ResNet-34 with DN-B (r=32, g=oup), batch 64, 240 epochs
# (paper: 21.58M params, 3580.08M MAdds, test top-1 85.96).
_base_ = './resnet34-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=32, g='oup')))
