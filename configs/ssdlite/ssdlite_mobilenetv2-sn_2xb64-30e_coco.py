# The BN baseline with Switchable Normalization in place of every BN of the
# backbone only (neck and head keep BN, as in the DN config). Only `type`
# changes: SN keeps FNA's eps=1e-3 and the reference's defaults.
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

model = dict(backbone=dict(norm_cfg=dict(type='SN')))
