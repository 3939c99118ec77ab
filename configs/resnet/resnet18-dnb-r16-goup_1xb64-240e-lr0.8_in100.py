# DN paper, Table 3: ResNet-18 with DN-B (r=16, g=oup) at lr 0.8
# (paper: 11.54M params, 1730.45M MAdds, test top-1 84.78).
_base_ = './resnet18-bn_1xb64-240e-lr0.8_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g='oup')))
