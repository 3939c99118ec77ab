# As the BN CPU stage-1 config, with DN-B (r=16, g=oup) in place of every BN:
# the norm of the DN-B shapes detector, so that its backbone loads this
# checkpoint (configs/ssdlite/
# ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu-pretrained_shapes.py).
_base_ = './mobilenet-v2-bn_1xb32-cpu_shapes-cls.py'

model = dict(backbone=dict(norm_cfg=dict(type='DN', r=16, g='oup')))
