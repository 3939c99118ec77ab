"""Measurement tools' libraries (benchmarks, profiles).

Not imported by ``import dn_mmdet``: the tools under ``tools/analysis``
import what they use from here.
"""
