# DN paper, Table 3 (note 2): ResNet-34 with BN, batch 64, 240 epochs, lr 0.2
# (paper: 21.33M params, 3579.81M MAdds, test top-1 85.84).
_base_ = './resnet18-bn_1xb64-240e_in100.py'

model = dict(backbone=dict(depth=34))
