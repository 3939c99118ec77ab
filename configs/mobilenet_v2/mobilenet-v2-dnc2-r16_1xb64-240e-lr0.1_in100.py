# DN paper, Table 1 (note 2): DN-C, the E[X] and Std[X] branches joined after
# the second FC, r=16, lr 0.1 (paper: 3.03M params, 301.05M MAdds; NaN).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', mode='C2', r=16, g=1)))
optim_wrapper = dict(optimizer=dict(lr=0.1))
