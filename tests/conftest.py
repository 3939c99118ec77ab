"""Imported by pytest before any test module."""
# dn_mmdet first: it makes the registries' CUDA build of torchvision importable
# beside CPU torch (dn_mmdet/utils/torchvision_compat.py), which
# ``import mmdet.models`` needs now that mmpretrain is installed.
import dn_mmdet  # noqa: F401
