# Ablation: 2.5x the learning rate (0.125), probing DN's stability at high lr.
_base_ = './ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'

optim_wrapper = dict(optimizer=dict(lr=0.125))
