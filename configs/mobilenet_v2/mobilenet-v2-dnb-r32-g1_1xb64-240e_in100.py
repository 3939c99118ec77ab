# DN paper, Table 6: DN-B (r=32, g=1) in place of every BN
# (paper: 2.69M params, 300.00M MAdds, test top-1 83.36).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=32, g=1)))
