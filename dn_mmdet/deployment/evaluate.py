"""Evaluate an exported detector with the config's pipeline and evaluator,
and compare its detections with PyTorch's."""

import copy
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.config import Config

from .runtime import OnnxRuntimeDetector

__all__ = [
    'DetectionDiff',
    'compare_detections',
    'build_onnx_runner',
    'evaluate_onnx',
    'first_test_batch',
    'verify_detector',
]


class DetectionDiff(NamedTuple):
    """How far one image's detections are from the reference's.

    ``count``: top detections compared; ``score``, ``box``: largest
    absolute difference of a compared pair's score and box coordinates;
    ``unmatched``: top detections of either result with no detection of
    the same label within ``atol`` in the other.
    """

    count: int
    score: float
    box: float
    unmatched: int


def _instances(result) -> Dict[str, torch.Tensor]:
    """``pred_instances`` of a data sample or of a dumped result dict."""
    pred = (
        result['pred_instances']
        if isinstance(result, dict)
        else result.pred_instances
    )
    get = (
        pred.get
        if isinstance(pred, dict)
        else (lambda key: getattr(pred, key))
    )
    return {
        key: torch.as_tensor(get(key))
        for key in ('scores', 'bboxes', 'labels')
    }


def compare_detections(
    reference: Sequence, other: Sequence, top_k: int = 10, atol: float = 1e-3
) -> List[DetectionDiff]:
    """Match each image's top-``top_k`` detections of each result in the
    other.

    A detection is matched by a not yet matched detection of the other
    result with the same label whose score and four box coordinates are
    each within ``atol`` (greedily, highest scores first): matching, not a
    comparison position by position, because two detections whose scores
    differ by less than the rounding may come in either order.

    Args:
        reference (Sequence): Per image, a ``DetDataSample`` or a result
            dict as ``tools/test.py --out`` dumps it.
        other (Sequence): The same for the other model, same images in the
            same order.
        top_k (int): Detections compared per image (fewer if an image has
            fewer). Default: 10.
        atol (float): Tolerance of scores and box coordinates (pixels of
            the original image). Default: 1e-3.

    Returns:
        list[DetectionDiff]: One per image.

    Raises:
        ValueError: The two cover different numbers of images, or an
            image's ids differ.
    """
    if len(reference) != len(other):
        raise ValueError(
            f'{len(reference)} reference results but {len(other)} to compare'
        )
    diffs = []
    for index, (ref, oth) in enumerate(zip(reference, other)):
        ref_id, oth_id = (_img_id(ref), _img_id(oth))
        if ref_id != oth_id:
            raise ValueError(
                f'result {index}: image {ref_id} in the '
                f'reference but {oth_id} in the other'
            )
        a, b = _instances(ref), _instances(oth)
        count, score_ab, box_ab, missing = _match(a, b, top_k, atol)
        _, score_ba, box_ba, extra = _match(b, a, top_k, atol)
        diffs.append(
            DetectionDiff(
                count,
                max(score_ab, score_ba),
                max(box_ab, box_ba),
                missing + extra,
            )
        )
    return diffs


def _match(
    a: Dict[str, torch.Tensor],
    b: Dict[str, torch.Tensor],
    top_k: int,
    atol: float,
):
    """Match ``a``'s top-``top_k`` detections in ``b`` (see
    :func:`compare_detections`): (compared, largest score difference,
    largest box difference, unmatched)."""
    order_a = a['scores'].argsort(descending=True)[:top_k].tolist()
    free = torch.ones(len(b['scores']), dtype=torch.bool)
    score_diff = box_diff = 0.0
    unmatched = 0
    for i in order_a:
        ds = (b['scores'] - a['scores'][i]).abs()
        db = (b['bboxes'] - a['bboxes'][i]).abs().reshape(len(ds), -1)
        db = db.amax(-1) if db.numel() else ds
        ok = (
            free
            & (b['labels'] == a['labels'][i])
            & (ds <= atol)
            & (db <= atol)
        )
        hits = ok.nonzero().flatten()
        if len(hits) == 0:
            unmatched += 1
            continue
        # The closest score among the candidates.
        j = hits[ds[hits].argmin()]
        free[j] = False
        score_diff = max(score_diff, float(ds[j]))
        box_diff = max(box_diff, float(db[j]))
    return len(order_a), score_diff, box_diff, unmatched


def _img_id(result):
    if isinstance(result, dict):
        return result.get('img_id')
    return result.metainfo.get('img_id')


def build_onnx_runner(cfg: Config, onnx_file: str, threads: int = 0):
    """An mmengine ``Runner`` that tests ``cfg``'s test set with the
    exported model (:class:`OnnxRuntimeDetector`) in place of
    ``cfg.model``: the config's test dataloader, evaluator, hooks and
    logging, no checkpoint.

    Args:
        cfg (Config): The (merged) config; needs ``work_dir``.
        onnx_file (str): The exported network.
        threads (int): onnxruntime's threads an operator, 0 for its
            default. Default: 0.
    """
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    scope = cfg.get('default_scope', 'mmdet')
    # The head and data preprocessor are built from mmdet's registry before
    # the runner sets its scope.
    with DefaultScope.overwrite_default_scope(scope):
        model = OnnxRuntimeDetector(onnx_file, cfg.model, threads=threads)
    keys = (
        'default_hooks',
        'custom_hooks',
        'env_cfg',
        'log_processor',
        'log_level',
        'visualizer',
        'randomness',
        'launcher',
    )
    return Runner(
        model=model,
        work_dir=cfg.work_dir,
        test_dataloader=cfg.test_dataloader,
        test_cfg=cfg.get('test_cfg') or dict(type='TestLoop'),
        test_evaluator=cfg.test_evaluator,
        default_scope=scope,
        experiment_name=cfg.get('experiment_name'),
        cfg=cfg,
        **{key: cfg[key] for key in keys if cfg.get(key) is not None},
    )


def evaluate_onnx(
    cfg: Config, onnx_file: str, out: Optional[str] = None, threads: int = 0
) -> dict:
    """Test ``cfg``'s test set with the exported model.

    Args:
        cfg (Config): The config (with ``work_dir``).
        onnx_file (str): The exported network.
        out (str, optional): Dump the results to this ``.pkl`` as
            ``tools/test.py --out`` does (mmdet's ``DumpDetResults``).
        threads (int): onnxruntime's threads an operator. Default: 0.

    Returns:
        dict: The evaluator's metrics (e.g. ``coco/bbox_mAP``).
    """
    from mmdet.evaluation import DumpDetResults

    runner = build_onnx_runner(cfg, onnx_file, threads)
    if out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    return runner.test()


def first_test_batch(cfg: Config, batch_size: int = 1) -> dict:
    """The first ``batch_size`` samples of ``cfg``'s test set through its
    pipeline, collated as the dataloader collates them (a real image for
    :func:`verify_detector`)."""
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope

    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    with DefaultScope.overwrite_default_scope(
        cfg.get('default_scope', 'mmdet')
    ):
        dataset = DATASETS.build(loader_cfg.dataset)
    if len(dataset) == 0:
        raise ValueError("the config's test set is empty")
    return pseudo_collate(
        [dataset[i] for i in range(min(batch_size, len(dataset)))]
    )


def verify_detector(
    detector: nn.Module,
    onnx_model: OnnxRuntimeDetector,
    data: dict,
    top_k: int = 10,
    atol: float = 1e-3,
) -> Dict[str, object]:
    """Run PyTorch and onnxruntime on ``data`` and compare.

    Args:
        detector (nn.Module): The PyTorch detector (eval).
        onnx_model (OnnxRuntimeDetector): Its export in onnxruntime.
        data (dict): A collated batch (:func:`first_test_batch`).
        top_k (int): Detections compared per image. Default: 10.
        atol (float): Tolerance of scores and boxes. Default: 1e-3.

    Returns:
        dict: ``max_output_diff`` (largest absolute difference of the raw
        head outputs), ``detections`` (:class:`DetectionDiff` per image),
        ``ok`` (every top detection matched within ``atol``).
    """
    from .export import DetectorForExport

    with torch.no_grad():
        reference = detector.test_step(copy.deepcopy(data))
        exported = onnx_model.test_step(copy.deepcopy(data))
        images = onnx_model.data_preprocessor(copy.deepcopy(data), False)[
            'inputs'
        ]
        torch_out = DetectorForExport(detector)(images)
    onnx_out = onnx_model.run_network(images)
    output_diff = max(
        float((a - b).abs().max()) for a, b in zip(torch_out, onnx_out)
    )
    diffs = compare_detections(reference, exported, top_k, atol)
    return dict(
        max_output_diff=output_diff,
        detections=diffs,
        ok=all(d.unmatched == 0 for d in diffs),
    )
