"""Export a single-stage detector's network to ONNX.

What is exported is the part of the detector that has weights: the data
preprocessor's normalisation (channel flip, ``(x - mean) / std``), the
backbone, the neck and the head's forward, whose per-level class scores and
box deltas are the graph's outputs. Anchors, box decoding and NMS stay
where they are (the head's ``predict_by_feat`` after onnxruntime, see
:mod:`.runtime`), so an ONNX model detects what the PyTorch model detects:
the post-processing is the same code on the same numbers, up to the float
rounding of the network.

The graph comes from torch's TorchScript exporter (``dynamo=False``): it
traces the model's eval forward, which needs nothing but torch (the dynamo
exporter needs ``onnxscript`` and ``torch.export``, which fails on DN's
module under ``no_grad``). The C++ op ``dn_mmdet::dn_b_inference`` that
DN runs on the CPU is no ONNX op, so for the trace every DN layer is set to
``impl='composite'`` (:func:`composite_dn_layers`; a layer built with
``impl='op'`` exports too), whose traced form is plain torch ops: each DN-B
layer becomes standard ONNX ops: a mean over H and W (ReduceMean
or GlobalAveragePool), the SC-Module's two fully connected layers (Gemm or
MatMul) with the Sigmoid between them, and the normalisation's Mul and Add
(and the Clip of a fused ReLU6).
"""

import contextlib
import io
import os.path as osp
import warnings
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..norm import DynamicNorm2d, NormLayer
from ..utils import atomic_write

__all__ = [
    'MIN_OPSET',
    'MAX_OPSET',
    'DEFAULT_OPSET',
    'INPUT_NAME',
    'DetectorForExport',
    'check_exportable',
    'composite_dn_layers',
    'export_detector',
    'load_detector',
    'output_names',
    'pipeline_input_shape',
]

#: The oldest opset the export supports: 11 is the first whose Clip takes
#: its bounds as inputs, which is how torch exports ReLU6 (older opsets get
#: a Clip with attribute bounds through a different symbolic that the tests
#: do not cover), and whose Gather/Slice cover the channel flip.
MIN_OPSET = 11
#: The newest opset torch's TorchScript exporter writes.
MAX_OPSET = 20
DEFAULT_OPSET = 17
#: The graph's input: (N, 3, H, W) float32 images as the test pipeline
#: gives them (BGR for mmdet's ``LoadImageFromFile``, 0..255), not yet
#: normalised.
INPUT_NAME = 'image'


def output_names(num_levels: int) -> Tuple[str, ...]:
    """The graph's outputs: ``cls_score_0..L-1`` then ``bbox_pred_0..L-1``."""
    return tuple(f'cls_score_{i}' for i in range(num_levels)) + tuple(
        f'bbox_pred_{i}' for i in range(num_levels)
    )


class DetectorForExport(nn.Module):
    r"""A single-stage detector as the exported graph computes it.

    .. math::

        x = (\mathrm{flip}(I) - \mu) / \sigma, \qquad
        (s_l, b_l)_{l=1..L} = \mathrm{head}(\mathrm{neck}(
        \mathrm{backbone}(x)))

    where ``flip`` reverses the channels if the data preprocessor converts
    BGR to RGB (or back) and :math:`\mu, \sigma` are its mean and std (no
    normalisation if it has none): exactly the data preprocessor's
    per-image steps, in its order, without its padding (the input has the
    export's fixed size).

    Args:
        detector (nn.Module): An mmdet single-stage detector
            (``extract_feat`` and ``bbox_head``) with an
            ``ImgDataPreprocessor`` (e.g. ``DetDataPreprocessor``).

    Shape:
        - Input: (N, 3, H, W), float.
        - Output: ``2 * L`` tensors: the head's class scores (N, A_l * K,
          H_l, W_l) for each level, then its box deltas (N, A_l * 4, H_l,
          W_l).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        from mmengine.model import ImgDataPreprocessor

        if not (
            hasattr(detector, 'extract_feat')
            and hasattr(detector, 'bbox_head')
        ):
            raise TypeError(
                f'{type(detector).__name__} is not a single-stage detector '
                '(extract_feat and bbox_head); only those can be exported'
            )
        pre = detector.data_preprocessor
        if not isinstance(pre, ImgDataPreprocessor):
            raise TypeError(
                f'{type(detector).__name__}.data_preprocessor is a '
                f'{type(pre).__name__}; the export needs an '
                'ImgDataPreprocessor (e.g. DetDataPreprocessor) to know the '
                'normalisation'
            )
        self.detector = detector
        # ImgDataPreprocessor keeps these as private attributes; they are
        # what its forward applies to each image.
        self.flip_channels = bool(pre._channel_conversion)
        self.normalize = bool(pre._enable_normalize)
        if self.normalize:
            self.register_buffer('mean', pre.mean.detach().clone(), False)
            self.register_buffer('std', pre.std.detach().clone(), False)

    def extra_repr(self) -> str:
        return (
            f'flip_channels={self.flip_channels}, normalize={self.normalize}'
        )

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        x = image
        if self.flip_channels:
            x = x[:, [2, 1, 0]]
        if self.normalize:
            x = (x - self.mean) / self.std
        cls_scores, bbox_preds = self.detector.bbox_head(
            self.detector.extract_feat(x)
        )
        return tuple(cls_scores) + tuple(bbox_preds)


def check_exportable(detector: nn.Module, opset: int) -> None:
    """Raise if ``detector`` cannot be exported as it is, naming why.

    Args:
        detector (nn.Module): The detector.
        opset (int): The ONNX opset asked for.

    Raises:
        ValueError: An opset outside [MIN_OPSET, MAX_OPSET]; a module in
            training mode (the graph is the eval forward; call
            ``detector.eval()``); a DN-C layer; a norm layer that
            normalises with batch statistics in eval (no running
            statistics), whose graph would depend on the batch.
    """
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not (MIN_OPSET <= opset <= MAX_OPSET)
    ):
        raise ValueError(
            f'opset {opset!r} is not supported: the export needs an opset '
            f'from {MIN_OPSET} (Clip with input bounds for ReLU6) to '
            f"{MAX_OPSET} (the newest torch's TorchScript exporter writes)"
        )
    for name, module in detector.named_modules():
        where = name or type(detector).__name__
        if module.training:
            raise ValueError(
                f'{where} ({type(module).__name__}) is in training mode; '
                'the export writes the eval forward: call model.eval() '
                'first'
            )
        if isinstance(module, DynamicNorm2d) and module.mode != 'B':
            raise ValueError(
                f'{where}: DN-C (mode={module.mode!r}) is not supported; '
                'only DN-B layers are exported (DN-C does not train, DN '
                'paper Table 1, and its export is untested)'
            )
        if isinstance(module, NormLayer):
            batch_stats = module.uses_batch_statistics
        elif isinstance(module, _BatchNorm):
            batch_stats = module.running_mean is None
        else:
            continue
        if batch_stats:
            raise ValueError(
                f'{where} ({type(module).__name__}) normalises with the '
                'statistics of its input batch (no running statistics), '
                'so its output depends on the batch; only layers with '
                'running statistics can be exported'
            )


@contextlib.contextmanager
def composite_dn_layers(model: nn.Module) -> Iterator[List[DynamicNorm2d]]:
    """Every DN layer of ``model`` computes with its composite
    implementation (``impl='composite'``) inside the block, and with its
    own ``impl`` again after it.

    The composite is the one a trace can write as ONNX: the C++ op
    (``impl='op'``, and ``'auto'`` on the CPU outside a trace) would be an
    op of the ``dn_mmdet`` domain that onnxruntime does not know. Both
    compute the same function, so the graph is the model's.

    Args:
        model (nn.Module): The model.

    Yields:
        list[DynamicNorm2d]: Its DN layers.
    """
    layers = [m for m in model.modules() if isinstance(m, DynamicNorm2d)]
    impls = [layer.impl for layer in layers]
    try:
        for layer in layers:
            layer.impl = 'composite'
        yield layers
    finally:
        for layer, impl in zip(layers, impls):
            layer.impl = impl


def export_detector(
    detector: nn.Module,
    output_file: str,
    shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    batch_size: int = 1,
) -> Tuple[Tensor, ...]:
    """Write ``detector``'s network (:class:`DetectorForExport`) as ONNX.

    Checks everything first (:func:`check_exportable`): on bad input
    nothing is written. The file is written whole or not at all.

    Args:
        detector (nn.Module): A single-stage detector in eval mode.
        output_file (str): The ``.onnx`` file (its folder is created).
        shape (Sequence[int]): Input (H, W).
        opset (int): ONNX opset. Default: :data:`DEFAULT_OPSET`.
        dynamic_batch (bool): A free batch dimension (else fixed to
            ``batch_size``). Default: False.
        batch_size (int): The traced batch. Default: 1.

    Returns:
        tuple[Tensor]: PyTorch's outputs on the traced input (random
        pixels, seed 0), in the graph's output order.
    """
    check_exportable(detector, opset)
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f'shape must be (H, W) of positive ints, got {tuple(shape)!r}'
        )
    if osp.isdir(output_file):
        raise ValueError(f'output file {output_file} is a directory')
    wrapper = DetectorForExport(detector).eval()
    image = (
        torch.rand(
            batch_size, 3, *shape, generator=torch.Generator().manual_seed(0)
        )
        * 255
    )
    with torch.no_grad():
        # An eager forward first: it is what PyTorch computes, and models
        # whose layers set themselves up on their first forward (DN's
        # activation fusion) are traced as they then run.
        expected = wrapper(image)
        names = output_names(len(expected) // 2)
        dynamic_axes = None
        if dynamic_batch:
            dynamic_axes = {n: {0: 'batch'} for n in (INPUT_NAME, *names)}
        buffer = io.BytesIO()
        with warnings.catch_warnings(), composite_dn_layers(wrapper):
            # The legacy exporter's notices that it is deprecated (chosen
            # here: the dynamo exporter needs onnxscript and torch.export).
            warnings.filterwarnings(
                'ignore',
                message='You are using the legacy TorchScript',
                category=DeprecationWarning,
            )
            warnings.filterwarnings(
                'ignore',
                category=DeprecationWarning,
                module=r'torch\.onnx\.',
            )
            # The norm layers' input checks (channels, values per channel,
            # an empty batch) read the input's shape as Python values: the
            # tracer warns that their outcome is frozen, which is what the
            # export wants (the size is fixed, the batch is >= 1).
            warnings.filterwarnings(
                'ignore',
                category=torch.jit.TracerWarning,
                module=r'dn_mmdet\.norm\.',
            )
            torch.onnx.export(
                wrapper,
                (image,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(names),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
            )
    atomic_write(output_file, buffer.getvalue())
    return expected


def load_detector(cfg, checkpoint: str):
    """``cfg``'s detector with ``checkpoint``'s weights, in eval, on the
    CPU (mmdet's ``init_detector``).

    The checkpoint is read as ``tools/test.py`` reads it
    (:func:`~dn_mmdet.utils.compat.safe_checkpoint_loading`: torch's
    weights-only unpickler, with the globals of the runner's checkpoints
    allowed) and must fit the model whole, as the runner's
    ``CheckpointMatchHook`` demands: mmengine loads what matches and skips
    the rest, which would export a partly random network.

    Args:
        cfg (Config): The (merged) config.
        checkpoint (str): The checkpoint file.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        CheckpointReadError: It cannot be read (naming the file and why).
        CheckpointMismatchError: It does not fit the model (naming the
            keys).
    """
    from mmdet.apis import init_detector
    from mmengine.runner import CheckpointLoader

    from ..utils.checkpoint import (
        CheckpointMismatchError,
        format_mismatch,
        state_dict_mismatch,
    )
    from ..utils.compat import safe_checkpoint_loading
    from ..utils.launch import check_file

    check_file(checkpoint, 'Checkpoint file')
    with safe_checkpoint_loading():
        saved = CheckpointLoader.load_checkpoint(checkpoint, 'cpu')
        detector = init_detector(cfg, checkpoint, device='cpu')
    mismatch = state_dict_mismatch(
        detector.state_dict(), saved.get('state_dict', saved)
    )
    if mismatch:
        raise CheckpointMismatchError(
            f'Checkpoint {checkpoint} does not fit the model of this '
            f'config.\n{format_mismatch(mismatch)}'
        )
    return detector


def pipeline_input_shape(cfg) -> Tuple[int, int]:
    """(H, W) of every image of ``cfg``'s test pipeline: the ``scale`` of
    its ``Resize`` with ``keep_ratio=False``.

    Raises:
        ValueError: The pipeline has no such Resize (its images may differ
            in size); the caller must be told the size.
    """
    pipeline = cfg.test_dataloader.dataset.get('pipeline', [])
    for step in pipeline:
        if (
            step.get('type') in ('Resize', 'mmdet.Resize')
            and not step.get('keep_ratio', False)
            and step.get('scale') is not None
        ):
            scale = step['scale']
            if isinstance(scale, int):
                return scale, scale
            width, height = scale  # mmcv's Resize takes (w, h)
            return int(height), int(width)
    raise ValueError(
        'the test pipeline has no Resize to a fixed size (keep_ratio=False),'
        ' so the input size is unknown: give --shape H W'
    )
