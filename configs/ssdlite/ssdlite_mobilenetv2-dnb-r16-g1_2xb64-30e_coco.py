# Ablation: DN-B with g=1 (one input channel per group in the SC-Module's
# second FC) instead of g=oup.
_base_ = './ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'

model = dict(backbone=dict(norm_cfg=dict(g=1)))
