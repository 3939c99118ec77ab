# DN paper, Table 3: ResNet-18 with BN at lr 0.5 (paper: test top-1 84.64).
_base_ = './resnet18-bn_1xb64-240e_in100.py'

optim_wrapper = dict(optimizer=dict(lr=0.5))
