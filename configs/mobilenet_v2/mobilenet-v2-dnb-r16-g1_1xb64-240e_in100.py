# DN paper, Tables 1, 2, 4, 6, 7 and 8: DN-B (r=16, g=1) in place of every BN
# (paper: 3.03M params, 300.34M MAdds, test top-1 84.08).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g=1)))
