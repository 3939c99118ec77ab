"""Weight-centred convolution, the conv that MABN is paired with (Yan et al.,
"Towards Stabilizing Batch Statistics in Backward Propagation of Batch
Normalization", ICLR 2020)."""

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch import Tensor

from .base import replace_modules

_Size = Union[int, Tuple[int, int]]


@MODELS.register_module('CenConv')
@MODELS.register_module('CenConv2d')
class CenConv2d(nn.Conv2d):
    r"""A 2-D convolution whose weight is centred per output channel.

    .. math::

        \hat W_o = W_o - \frac{1}{|W_o|} \sum_{i, k_h, k_w} W_{o, i, k_h, k_w}

    Each output channel's kernel has zero mean over its (input channels of
    its group, kh, kw), so a channel's output has (approximately) zero mean
    whatever the input's mean: MABN, which normalises by the second moment
    alone (no mean subtraction), relies on that. Unlike mmcv's ``ConvWS``
    the weight is not divided by its standard deviation. With ``groups``
    each output channel is centred over its own group's inputs (a depthwise
    kernel over its kh x kw taps).

    Arguments are those of ``nn.Conv2d``; ``bias`` defaults to False, as in
    MABN's reference code (a norm follows). The stored ``weight`` is the
    uncentred parameter (checkpoint keys are a ``Conv2d``'s); the centring
    happens in :meth:`_conv_forward`, which every caller of the conv goes
    through, including mmcv's ``efficient_conv_bn_eval`` (it passes a
    weight scaled per output channel, and centring commutes with that
    scaling) and ``fuse_conv_bn`` (which rescales ``weight`` in place):
    both stay exact.

    Registered in mmengine's root ``MODELS`` as ``CenConv`` and
    ``CenConv2d``, so ``conv_cfg=dict(type='CenConv')`` works in any
    ``ConvModule``-based backbone.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out, H_out, W_out), as ``nn.Conv2d``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: Union[_Size, str] = 0,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = 'zeros',
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )

    def centered_weight(self, weight: Optional[Tensor] = None) -> Tensor:
        """``weight`` (default: the parameter) minus its mean over
        (in, kh, kw) per output channel."""
        weight = self.weight if weight is None else weight
        return weight - weight.mean(dim=(1, 2, 3), keepdim=True)

    def _conv_forward(
        self, input: Tensor, weight: Tensor, bias: Optional[Tensor]
    ) -> Tensor:
        return super()._conv_forward(input, self.centered_weight(weight), bias)

    def to_conv2d(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` holding the centred weight: the same function
        without the centring step, for inference."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
        ).to(self.weight)
        with torch.no_grad():
            conv.weight.copy_(self.centered_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    @classmethod
    def convert_to_conv2d(cls, module: nn.Module) -> nn.Module:
        """Replace every :class:`CenConv2d` in ``module`` by
        :meth:`to_conv2d` (in place; returns ``module``, or the conv if it
        is one). With ``MABN2d.convert_to_batchnorm`` and mmcv's
        ``fuse_conv_bn`` a MABN + CenConv model becomes a plain conv model:
        inference then costs what the BN model's does."""
        return replace_modules(
            module, lambda m: m.to_conv2d() if isinstance(m, cls) else None
        )
