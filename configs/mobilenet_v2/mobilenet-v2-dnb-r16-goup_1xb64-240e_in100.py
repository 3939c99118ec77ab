# DN paper, Tables 1, 2 and 7: DN-B (r=16, g=oup) in place of every BN
# (paper: 4.36M params, 301.66M MAdds, test top-1 84.74).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g='oup')))
