# DN paper, Table 3 (note 4): ResNet-34 with BN at batch 4 for 60 epochs;
# the table gives no lr for these rows: 0.2 as every other row, not scaled
# (paper: test top-1 53.20).
_base_ = './resnet34-bn_1xb64-240e_in100.py'

train_dataloader = dict(batch_size=4)
param_scheduler = dict(T_max=60, end=60)
train_cfg = dict(max_epochs=60)
