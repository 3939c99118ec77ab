# DN paper, Table 2: an SE block (r=16, FCs with bias) directly in front of
# every BN (paper: 3.73M params, 300.98M MAdds, test top-1 82.00).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='SEBN', r=16)))
