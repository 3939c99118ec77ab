"""A benchmark worker process: ``python -m dn_mmdet.analysis.benchmark
SETTINGS MODEL VARIANTS BATCH SIZE`` (see :mod:`.worker`)."""

from dn_mmdet.analysis.benchmark.worker import main

main()
