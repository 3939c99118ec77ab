# DN paper, Table 1 (note 1): DN-C, the E[X] and Std[X] branches joined after
# the first FC, r=16, lr 0.1 (paper: 3.03M params, 301.02M MAdds; the loss
# became NaN). The run stops at the first non-finite value and names the
# layer (NonFiniteCheckHook).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', mode='C1', r=16, g=1)))
optim_wrapper = dict(optimizer=dict(lr=0.1))
