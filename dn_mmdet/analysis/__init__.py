"""Libraries of the analysis tools (``tools/analysis``): benchmarks,
profiles, the normaliser study.

Not imported by ``import dn_mmdet``: they pull in plotting and process
supervision that a model user does not need; the tools import what they use.
"""
