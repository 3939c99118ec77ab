# Normaliser study on the shapes detector (tools/analysis/norm_study.py):
# FNA's SSDLite-MobileNetV2 from scratch on the embedded shapes data with
# each normaliser in the backbone (the paper changes the backbone alone; the
# extra layers and the head keep BN), at the recipe's batch 16 and at 4 and
# 2 with the recipe's lr (the design of DN Table 4), and at 2.5x the lr with
# batch 16 (Table 8). Make the data first:
# python tools/misc/make_shapes_dataset.py
#
#   python tools/analysis/norm_study.py \
#       configs/studies/norm_study_ssdlite_shapes.py [--quick]
_base_ = ['./_base_/norms.py']

base_config = 'configs/ssdlite/ssdlite_mobilenetv2-bn_1xb16-cpu_shapes.py'
metric = 'coco/bbox_mAP'
metric_scale = 100
metric_label = 'bbox mAP (%)'
# Chance level: mmdet logs the mAP to 3 decimals, and a detector that has
# learned nothing scores 0.000. (A short study's undertrained runs can end
# there too: compare with BN at the reference setting.)
collapse_below = 0.0

norms = ['bn', 'gn', 'sn', 'mabn', 'dnb-r16-g1', 'dnb-r16-goup', 'dnc1-r16']
batch_sizes = [16, 4, 2]
lr_mults = [1, 2.5]
seeds = [0, 1, 2]

# The recipe, shortened to fit about 2 hours for 7 normalisers (84 runs) on
# an idle 2-core CPU: 3 epochs over the first 400 training images, the
# warm-up (100 iterations in the recipe) over 20 iterations and the cosine
# schedule ending at the new last epoch (the base's schedulers are sized for
# its 20 epochs), a validation every epoch (the metric-per-epoch curves;
# always on all 300 val images, which the COCO metric expects), two
# checkpoints kept while a run trains. This is early training: the recipe
# reaches ~2% mAP after 4,000 images (README), a run here sees 1,200.
cfg_options = {
    'train_cfg.max_epochs': 3,
    'train_cfg.val_interval': 1,
    'param_scheduler.0.end': 20,
    'param_scheduler.1.end': 3,
    'param_scheduler.1.T_max': 3,
    'train_dataloader.dataset.indices': 400,
    'default_hooks.checkpoint.max_keep_ckpts': 2,
    # The best checkpoint is not needed: the study reads the logs.
    'default_hooks.checkpoint.save_best': None,
    # The recipe starts every class at probability 0.002 (cls_prior_prob),
    # below its 0.02 score threshold: after a short run no box may pass it,
    # and CocoMetric then reports no mAP at all. Evaluating the boxes above
    # 0.001 instead can only add detections at the tail of the ranking.
    'model.test_cfg.score_thr': 0.001,
}

presets = dict(
    # About 15 minutes: the norms that exist today, batch 16 and 2, one
    # seed. A check of the pipeline, not evidence.
    quick=dict(
        norms=['bn', 'gn', 'dnb-r16-goup'],
        batch_sizes=[16, 2],
        seeds=[0],
        cfg_options={
            'train_cfg.max_epochs': 2,
            'param_scheduler.1.end': 2,
            'param_scheduler.1.T_max': 2,
            'train_dataloader.dataset.indices': 320,
        },
    ),
    # About 8 hours (overnight): 6 epochs over 1,000 images, 5x the default's
    # training, for differences in mAP rather than in early training.
    long=dict(
        cfg_options={
            'train_cfg.max_epochs': 6,
            'param_scheduler.0.end': 50,
            'param_scheduler.1.end': 6,
            'param_scheduler.1.T_max': 6,
            'train_dataloader.dataset.indices': 1000,
        }
    ),
)
