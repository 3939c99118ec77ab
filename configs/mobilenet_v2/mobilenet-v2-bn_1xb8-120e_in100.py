# DN paper, Table 4: BN at batch 8 for 120 epochs, lr 0.2 as in the table
# (not scaled; the paper: train top-1 1.00, val 2.50, BN fails).
_base_ = './mobilenet-v2-bn_1xb64-240e_in100.py'

train_dataloader = dict(batch_size=8)
param_scheduler = dict(T_max=120, end=120)
train_cfg = dict(max_epochs=120)
