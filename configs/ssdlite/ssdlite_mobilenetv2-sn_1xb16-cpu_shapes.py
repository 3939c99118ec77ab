# As the BN shapes config, with Switchable Normalization in the backbone
# only. Only `type` changes: SN takes the BN norm_cfg's eps=1e-3 (FNA's) and
# its defaults, the reference's (momentum 0.1 = keep factor 0.9, IN/LN/BN).
_base_ = './ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'

model = dict(backbone=dict(norm_cfg=dict(type='SN')))
