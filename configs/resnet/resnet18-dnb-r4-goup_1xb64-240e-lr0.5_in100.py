# DN paper, Table 3: ResNet-18 with DN-B (r=4, g=oup) at lr 0.5
# (paper: test top-1 85.34).
_base_ = './resnet18-bn_1xb64-240e-lr0.5_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=4, g='oup')))
