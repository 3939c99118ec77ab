# The BN baseline with MABN and weight-centred convs in the backbone only.
# batch_size is B, the images one GPU sees an iteration (64 here); at the
# paper's batch the window needs to span one iteration only
# (real_batch_size // batch_size = 1): per-batch statistics without centring,
# renormalised towards the running estimate after 1,000 iterations.
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

model = dict(
    backbone=dict(
        conv_cfg=dict(type='CenConv'),
        norm_cfg=dict(type='MABN', batch_size=64, real_batch_size=64),
    )
)
