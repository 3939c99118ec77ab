# The detector arm of the claims study (issue #29), for a later session:
# the shapes main job (FNA's SSDLite-MobileNetV2 from scratch, its full 20
# epochs) with BN and with DN-B (16, oup) in the backbone, three seeds
# each: bbox mAP mean and 95% interval. About 15-60 CPU-minutes a run.
# Make the data first: python tools/misc/make_shapes_dataset.py
#
#   nice -n 15 python tools/analysis/norm_study.py \
#       configs/studies/norm_study_claims_ssdlite_shapes.py \
#       --work-dir docs/studies/norm_study_claims_ssdlite_shapes
_base_ = ['./_base_/norms.py']

base_config = 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
metric = 'coco/bbox_mAP'
metric_scale = 100
metric_label = 'bbox mAP (%)'
chance = 0.0
collapse_below = 0.0
threads = 1
keep_checkpoints = 'last'

norms = ['bn', 'dnb-r16-goup']
batch_sizes = [16]
seeds = [0, 1, 2]
cfg_options = {'default_hooks.checkpoint.save_best': None}

claims = [
    dict(
        key='det-dnb',
        kind='effect',
        source='DN paper (COCO detection)',
        text='the detector with DN-B (16, oup) in its backbone beats BN',
        terms=[(1, 'dnb-r16-goup', 16, 1), (-1, 'bn', 16, 1)],
    ),
]
