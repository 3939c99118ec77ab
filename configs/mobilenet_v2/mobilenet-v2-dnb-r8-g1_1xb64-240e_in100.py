# DN paper, Table 6: DN-B (r=8, g=1) in place of every BN
# (paper: 3.72M params, 301.02M MAdds, test top-1 84.26).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=8, g=1)))
