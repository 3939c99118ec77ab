"""Necks.

FNA's SSDLite extra layers need no new class: mmdet's ``SSDNeck`` with
``use_depthwise=True, l2_norm_scale=None`` builds exactly FNA's
1x1 conv + norm + ReLU6 followed by a depthwise-separable 3x3 stride-2 block
(depthwise + norm + ReLU6, pointwise + norm + ReLU6), bias-free because a
norm follows every conv. See ``configs/_base_/models/ssdlite_mobilenetv2_fna.py``.
"""
__all__ = []
