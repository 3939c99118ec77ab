# Ablation: small batch, 8 images a GPU (BN statistics get noisy, DN's
# per-sample affine does not depend on the batch). The lr follows the
# linear scaling rule: 0.05 * 16 / 128.
_base_ = './ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'

train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=0.05 * 16 / 128))
