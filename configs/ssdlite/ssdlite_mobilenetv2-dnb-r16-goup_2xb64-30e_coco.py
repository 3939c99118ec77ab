# The DN paper's detector: as the BN baseline, with DN-B (r=16, g=oup) in
# place of every BN of the backbone only (paper: 6.33M params, 19.2 mAP).
# Neck and head keep BN. DN keeps FNA's norm statistics setting (eps=1e-3).
_base_ = './ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'

model = dict(
    backbone=dict(
        norm_cfg=dict(_delete_=True, type='DN', r=16, g='oup', eps=1e-3)
    )
)
