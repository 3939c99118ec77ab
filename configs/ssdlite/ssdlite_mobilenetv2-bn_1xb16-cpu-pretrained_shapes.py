# The BN shapes detector (stage 2) started from the stage-1 classifier of
# configs/mobilenet_v2/mobilenet-v2-bn_1xb32-cpu_shapes-cls.py: its backbone.*
# weights are loaded strictly (MobileNetV2DN refuses a checkpoint whose keys
# or shapes differ, listing them). Otherwise identical to the from-scratch
# config, so the two runs compare pre-training alone. The checkpoint is the
# classifier's last epoch; point at another one with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
_base_ = './ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/mobilenet-v2-bn_1xb32-cpu_shapes-cls/'
            'epoch_6.pth',
            prefix='backbone.',
        )
    )
)
