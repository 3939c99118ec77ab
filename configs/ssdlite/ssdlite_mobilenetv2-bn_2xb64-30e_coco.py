# The DN paper's BN baseline: FNA's SSDLite, MobileNetV2 with BN,
# 2 GPUs x 64 images, 30 epochs (paper: 4.32M params, 0.81G MAdds, 15.3 mAP).
_base_ = [
    '../_base_/models/ssdlite_mobilenetv2_fna.py',
    '../_base_/datasets/coco_detection_ssdlite.py',
    '../_base_/schedules/rmsprop_30e.py',
    '../_base_/default_runtime.py',
]
custom_imports = dict(imports=['dn_mmdet'], allow_failed_imports=False)

# The paper initialises the backbone from its ImageNet-100 classifier
# (stage 1), e.g.:
# model = dict(backbone=dict(init_cfg=dict(
#     type='Pretrained', checkpoint='work_dirs/<stage1>/backbone.pth')))

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointAfterValHook',
        interval=1,
        max_keep_ckpts=3,
        save_best='coco/bbox_mAP',
        rule='greater',
    )
)
