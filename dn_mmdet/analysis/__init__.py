"""Libraries of the analysis tools (``tools/analysis``).

Not imported by ``import dn_mmdet``: they pull in plotting and process
supervision that a model user does not need.
"""
