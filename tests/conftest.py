"""Shared by the whole suite."""
# Before any test module imports mmpretrain (which imports torchvision): see
# dn_mmdet.utils.torchvision_compat.
import dn_mmdet  # noqa: F401
