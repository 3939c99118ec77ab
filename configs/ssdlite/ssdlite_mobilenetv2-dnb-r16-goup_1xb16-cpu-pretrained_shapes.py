# The DN-B (r=16, g=oup) shapes detector started from the stage-1 DN-B
# classifier (configs/mobilenet_v2/
# mobilenet-v2-dnb-r16-goup_1xb32-cpu_shapes-cls.py), loaded strictly; see
# the BN variant.
_base_ = './ssdlite_mobilenetv2-dnb-r16-goup_1xb16-cpu_shapes.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/mobilenet-v2-dnb-r16-goup_1xb32-cpu_'
            'shapes-cls/epoch_6.pth',
            prefix='backbone.',
        )
    )
)
