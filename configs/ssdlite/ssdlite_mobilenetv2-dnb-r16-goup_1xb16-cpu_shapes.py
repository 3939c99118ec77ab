# As the BN shapes config, with DN-B (r=16, g=oup) in the backbone only.
_base_ = './ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'

model = dict(
    backbone=dict(
        norm_cfg=dict(_delete_=True, type='DN', r=16, g='oup', eps=1e-3)
    )
)
