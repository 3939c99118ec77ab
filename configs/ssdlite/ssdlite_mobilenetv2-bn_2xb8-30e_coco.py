# Ablation: the BN baseline with 8 images a GPU (lr scaled linearly).
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=0.05 * 16 / 128))
