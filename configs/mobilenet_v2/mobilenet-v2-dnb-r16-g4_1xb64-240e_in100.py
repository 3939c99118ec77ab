# DN paper, Table 7: DN-B (r=16, g=4) in place of every BN
# (paper: 3.14M params, 300.44M MAdds, test top-1 82.32).
# FC2 has h/g groups where that divides h and 2C; for the many odd hidden
# sizes h of MobileNetV2 the largest group count below it that does
# (printed by the layer's repr).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g=4)))
