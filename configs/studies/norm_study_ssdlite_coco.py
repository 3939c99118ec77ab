# Normaliser study on COCO for GPUs (tools/analysis/norm_study.py): the
# paper's detector and schedule (FNA's SSDLite-MobileNetV2, 30 epochs, 2 GPUs
# x 64 images, RMSprop lr 0.05) with each normaliser in the backbone, at 64,
# 8 and 4 images a GPU with the recipe's lr and at 2.5x the lr with 64.
# 5 normalisers x 4 settings x 3 seeds = 60 COCO trainings of 30 epochs.
#
#   python tools/analysis/norm_study.py \
#       configs/studies/norm_study_ssdlite_coco.py
#
# The paper initialises the backbones from ImageNet-100 (stage 1); add
# 'model.backbone.init_cfg.type': 'Pretrained' and its checkpoint to
# cfg_options (one per normaliser: give each entry its own cfg_options).
_base_ = ['./_base_/norms.py']

base_config = 'configs/ssdlite_mbv2_bn_coco.py'
metric = 'coco/bbox_mAP'
metric_scale = 100
metric_label = 'bbox mAP (%)'
collapse_below = 0.0

# SN and MABN join by adding 'sn', 'mabn' here once they are registered.
norms = ['bn', 'gn', 'dnb-r16-g1', 'dnb-r16-goup', 'dnc1-r16']
gpus = 2  # tools/dist_train.sh; batch sizes are per GPU, as BN sees them
batch_sizes = [64, 8, 4]
lr_mults = [1, 2.5]
seeds = [0, 1, 2]
deterministic = False  # cuDNN's fast kernels; seeds still fix the data
cfg_options = {
    # The study reads the logs; the last checkpoint is kept per run.
    'default_hooks.checkpoint.save_best': None,
}
