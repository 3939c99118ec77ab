# Ablation: the BN baseline at 2.5x the learning rate (0.125).
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

optim_wrapper = dict(optimizer=dict(lr=0.125))
