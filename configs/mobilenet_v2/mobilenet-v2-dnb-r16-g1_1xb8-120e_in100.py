# DN paper, Table 4: DN-B (16, 1) at batch 8 for 120 epochs, lr 0.2
# (paper: test top-1 78.42).
_base_ = './mobilenet-v2-bn_1xb8-120e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g=1)))
