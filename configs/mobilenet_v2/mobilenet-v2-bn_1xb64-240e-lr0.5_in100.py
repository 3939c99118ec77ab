# DN paper, Table 8: BN at lr 0.5 (paper: test top-1 74.12).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

optim_wrapper = dict(optimizer=dict(lr=0.5))
