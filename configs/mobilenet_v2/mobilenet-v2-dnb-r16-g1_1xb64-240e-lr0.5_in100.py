# DN paper, Table 8: DN-B (16, 1) at lr 0.5 (paper: test top-1 83.24).
_base_ = './mobilenet-v2-bn_1xb64-240e-lr0.5_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g=1)))
