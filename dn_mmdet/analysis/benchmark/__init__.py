"""The norm benchmark (``tools/analysis/benchmark_norm.py``) and the DN
layer profile (``tools/analysis/profile_dn_layer.py``) as a library.

* :mod:`.cases`: the variants (norm configs), the models (built through
  the registry) and the steps timed of one case;
* :mod:`.timing`: interleaved medians and peak memory in one process;
* :mod:`.worker`: one case in a fresh process (``python -m``);
* :mod:`.sweep`: the plan of workers, running them, the time left;
* :mod:`.report`: medians over runs, ratios to BN, tables, summary;
* :mod:`.layer_profile`, :mod:`.in_model`: a DN layer's time, alone and
  inside models.

Importing this package imports neither torch nor mmdet; its functions do.
"""

from .cases import (
    DEFAULT_CONFIG,
    DEFAULT_MODELS,
    DEFAULT_VARIANTS,
    DETECTORS,
    DN_VARIANTS,
    MIN_SIZE,
    MODELS,
    SHAPES_CONFIG,
    VARIANTS,
    build_model,
    build_steps,
    norm_cfg_of,
    norm_input_shapes,
    parse_dims,
)
from .report import (
    format_before_after,
    format_summary_line,
    format_sweep,
    format_table,
    median_over_runs,
    ratio_of,
    summarise,
    write_json,
)
from .sweep import (
    Sweep,
    WorkerError,
    dn_kernel_status,
    estimate_left,
    plan_jobs,
    run_sweep,
)
from .worker import PAIRED, WorkerSettings, run_worker, worker_command

__all__ = [
    'DEFAULT_CONFIG',
    'DEFAULT_MODELS',
    'DEFAULT_VARIANTS',
    'DETECTORS',
    'DN_VARIANTS',
    'MIN_SIZE',
    'MODELS',
    'SHAPES_CONFIG',
    'VARIANTS',
    'build_model',
    'build_steps',
    'norm_cfg_of',
    'norm_input_shapes',
    'parse_dims',
    'format_before_after',
    'format_summary_line',
    'format_sweep',
    'format_table',
    'median_over_runs',
    'ratio_of',
    'summarise',
    'write_json',
    'Sweep',
    'WorkerError',
    'dn_kernel_status',
    'estimate_left',
    'plan_jobs',
    'run_sweep',
    'PAIRED',
    'WorkerSettings',
    'run_worker',
    'worker_command',
]
