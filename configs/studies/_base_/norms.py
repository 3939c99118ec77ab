# The normalisers a study can compare (tools/analysis/norm_study.py). A study
# selects some by name (its `norms` list); each entry sets the study's
# `norm_keys` to `norm_cfg` (replacing the base config's dict) and, if given,
# its `conv_keys` to `conv_cfg`; `label` is what tables and plots show. A
# value '{batch_size}' anywhere in an entry becomes the run's batch size (for
# layers whose options depend on it, such as MABN's).
#
# FNA (the detector) and DenseNAS (the classifier) use eps=1e-3 in every norm
# layer, so every entry does.
# yapf: disable
norm_library = {
    'bn': dict(label='BN', norm_cfg=dict(type='BN', eps=1e-3)),
    # GN's group count must divide every channel count; MobileNetV2's are all
    # multiples of 8 (16, 24, 32, ...) but not of 32, GN's default.
    # DN Table 1's "SE (r=16) directly in front of each BN": the paper's
    # own baseline for DN-B's extra parameters.
    'sebn-r16': dict(label='SE-BN (16)',
                     norm_cfg=dict(type='SEBN', r=16, eps=1e-3)),
    'gn': dict(label='GN (8 groups)',
               norm_cfg=dict(type='GN', num_groups=8, eps=1e-3)),
    'dnb-r16-g1': dict(label='DN-B (16, 1)',
                       norm_cfg=dict(type='DN', r=16, g=1, eps=1e-3)),
    'dnb-r16-goup': dict(label='DN-B (16, oup)',
                         norm_cfg=dict(type='DN', r=16, g='oup', eps=1e-3)),
    # DN Table 1, notes 1 and 2: the E[X] and Std[X] branches join after FC1
    # (C1) or after FC2 (C2). The paper trained them at half the lr (0.1);
    # a study runs every normaliser at the same lr.
    'dnc1-r16': dict(label='DN-C1 (16)',
                     norm_cfg=dict(type='DN', r=16, g=1, mode='C1', eps=1e-3)),
    'dnc2-r16': dict(label='DN-C2 (16)',
                     norm_cfg=dict(type='DN', r=16, g=1, mode='C2', eps=1e-3)),
    'sn': dict(label='SN', norm_cfg=dict(type='SN', eps=1e-3)),
    # MABN's statistics cover the last real_batch_size // batch_size steps,
    # so it is told the run's batch; it is paired with weight-centred convs
    # (MABN paper, Sec. 4).
    'mabn': dict(label='MABN + CenConv',
                 norm_cfg=dict(type='MABN', batch_size='{batch_size}',
                               real_batch_size=32, eps=1e-3),
                 conv_cfg=dict(type='CenConv')),
}
# yapf: enable
