# DN paper, Table 3: ResNet-18 with DN-B (r=4, g=oup) in place of every BN,
# lr 0.2 (paper: 12.52M params, 1731.43M MAdds, test top-1 84.36).
_base_ = './resnet18-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=4, g='oup')))
