# DN paper, Table 3 (note 3): ResNet-34 with BN at batch 8 for 120 epochs;
# the table gives no lr for these rows: 0.2 as every other row, not scaled
# (paper: test top-1 82.32).
_base_ = './resnet34-bn_1xb64-240e_in100.py'

train_dataloader = dict(batch_size=8)
param_scheduler = dict(T_max=120, end=120)
train_cfg = dict(max_epochs=120)
