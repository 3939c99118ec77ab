"""Deployment: export a detector's network to ONNX (:mod:`.export`), run it
in onnxruntime as an mmengine model (:mod:`.runtime`), evaluate and verify
it (:mod:`.evaluate`), time it (:mod:`.benchmark`).

Not imported by ``dn_mmdet`` itself: it needs ``onnx`` and ``onnxruntime``
(``requirements/deploy.txt``), which training does not.
"""

from .benchmark import (
    all_threads,
    benchmark_latency,
    format_latency_table,
    machine_state,
    write_latency_json,
)
from .evaluate import (
    DetectionDiff,
    build_onnx_runner,
    compare_detections,
    evaluate_onnx,
    first_test_batch,
    verify_detector,
)
from .export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MAX_OPSET,
    MIN_OPSET,
    DetectorForExport,
    check_exportable,
    composite_dn_layers,
    export_detector,
    load_detector,
    output_names,
    pipeline_input_shape,
)
from .runtime import OnnxRuntimeDetector, load_session

__all__ = [
    'DEFAULT_OPSET',
    'INPUT_NAME',
    'MAX_OPSET',
    'MIN_OPSET',
    'DetectorForExport',
    'check_exportable',
    'composite_dn_layers',
    'export_detector',
    'load_detector',
    'output_names',
    'pipeline_input_shape',
    'OnnxRuntimeDetector',
    'load_session',
    'DetectionDiff',
    'build_onnx_runner',
    'compare_detections',
    'evaluate_onnx',
    'first_test_batch',
    'verify_detector',
    'all_threads',
    'benchmark_latency',
    'format_latency_table',
    'machine_state',
    'write_latency_json',
]
