"""Run an exported detector (:mod:`.export`) in onnxruntime as an mmengine
model, so that the config's own pipeline, evaluator and runner use it."""

import copy
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.model import BaseModel
from torch import Tensor

from .export import INPUT_NAME, output_names

__all__ = ['load_session', 'OnnxRuntimeDetector']


def load_session(onnx_file: str, threads: int = 0):
    """An onnxruntime CPU session of ``onnx_file``.

    Args:
        onnx_file (str): The ONNX model.
        threads (int): Threads of an operator (onnxruntime's
            ``intra_op_num_threads``); 0 for onnxruntime's default, one a
            core. Default: 0.

    Returns:
        onnxruntime.InferenceSession: With every graph optimisation on and
        the operators run one at a time.

    Raises:
        FileNotFoundError: ``onnx_file`` does not exist.
    """
    import onnxruntime as ort

    if not os.path.isfile(onnx_file):
        raise FileNotFoundError(f'ONNX model {onnx_file} does not exist')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    return ort.InferenceSession(
        onnx_file, options, providers=['CPUExecutionProvider']
    )


class OnnxRuntimeDetector(BaseModel):
    """A single-stage detector whose network runs in onnxruntime.

    The session computes the head's raw outputs from the images (see
    :class:`~.export.DetectorForExport`); the detections come from the
    config's own head (``model.bbox_head``, built from the config without
    weights: its ``predict_by_feat`` uses anchors, the box coder and NMS,
    none of which are learned), exactly as ``SingleStageDetector.predict``
    makes them. The data preprocessor is the config's without its
    normalisation, which the graph does: it stacks the images and casts
    them to float.

    Args:
        onnx_file (str): The exported network.
        model_cfg (dict): The config's ``model`` (the one exported).
        threads (int): onnxruntime's threads a operator, 0 for its
            default. Default: 0.

    Raises:
        ValueError: The graph's inputs or outputs are not those of
            :func:`~.export.export_detector` for this head.
    """

    def __init__(
        self, onnx_file: str, model_cfg: dict, threads: int = 0
    ) -> None:
        from mmdet.registry import MODELS

        model_cfg = ConfigDict(copy.deepcopy(dict(model_cfg)))
        pre_cfg = model_cfg.get('data_preprocessor') or {}
        pre_cfg.update(mean=None, std=None, bgr_to_rgb=False, rgb_to_bgr=False)
        super().__init__(data_preprocessor=MODELS.build(pre_cfg))
        head_cfg = model_cfg.bbox_head
        head_cfg.update(train_cfg=None, test_cfg=model_cfg.get('test_cfg'))
        self.bbox_head = MODELS.build(head_cfg)
        self.onnx_file = onnx_file
        self.session = load_session(onnx_file, threads)
        inputs = self.session.get_inputs()
        levels = len(self.bbox_head.prior_generator.strides)
        self.output_names = list(output_names(levels))
        got = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT_NAME] or sorted(got) != sorted(
            self.output_names
        ):
            raise ValueError(
                f'{onnx_file}: expected input [{INPUT_NAME!r}] and outputs '
                f'{self.output_names} (a {levels}-level head exported by '
                f'tools/deployment/pytorch2onnx.py), got '
                f'{[i.name for i in inputs]} and {got}'
            )
        # (N, 3, H, W): ints where fixed, names where free.
        self.input_shape = tuple(inputs[0].shape)

    def extra_repr(self) -> str:
        return f'onnx_file={self.onnx_file!r}, input={self.input_shape}'

    def run_network(self, images: Tensor) -> List[Tensor]:
        """The graph's outputs for ``images``, in its output order.

        A graph exported with a fixed batch of 1 runs image by image.

        Args:
            images (Tensor): (N, 3, H, W), not normalised.

        Returns:
            list[Tensor]: ``cls_score_0..L-1, bbox_pred_0..L-1``.

        Raises:
            ValueError: ``images`` do not have the graph's fixed sizes.
        """
        fixed = self.input_shape
        shape = tuple(images.shape)
        size_ok = all(
            not isinstance(f, int) or f == s
            for f, s in zip(fixed[1:], shape[1:])
        )
        batch = fixed[0]
        if not size_ok or (
            isinstance(batch, int) and batch not in (1, shape[0])
        ):
            raise ValueError(
                f'{self.onnx_file} takes images of shape {fixed}, got a '
                f'batch of {shape}: export the model at the size the test '
                'pipeline gives (--shape), or with --dynamic-batch'
            )
        array = images.float().numpy()
        if isinstance(batch, int) and batch != shape[0]:
            chunks = [array[i : i + 1] for i in range(shape[0])]
        else:
            chunks = [array]
        runs = [
            self.session.run(self.output_names, {INPUT_NAME: chunk})
            for chunk in chunks
        ]
        return [
            torch.from_numpy(np.concatenate([run[i] for run in runs]))
            for i in range(len(self.output_names))
        ]

    def forward(
        self,
        inputs: Tensor,
        data_samples: Optional[Sequence] = None,
        mode: str = 'predict',
    ):
        """Detections of ``inputs`` added to ``data_samples`` (as
        ``pred_instances``, boxes in the original image's pixels).

        Only ``mode='predict'``: the network has no loss.
        """
        if mode != 'predict':
            raise ValueError(
                f'OnnxRuntimeDetector: mode {mode!r} is not '
                "supported, only 'predict'"
            )
        outputs = self.run_network(inputs)
        levels = len(outputs) // 2
        results = self.bbox_head.predict_by_feat(
            outputs[:levels],
            outputs[levels:],
            batch_img_metas=[s.metainfo for s in data_samples],
            rescale=True,
        )
        for sample, result in zip(data_samples, results):
            sample.pred_instances = result
        return data_samples
