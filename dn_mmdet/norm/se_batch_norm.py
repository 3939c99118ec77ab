"""BatchNorm behind a Squeeze-and-Excitation block: the DN paper's SE baseline.

The paper (Sec. 3.3, eqs. 3-5; Table 2) compares DN with "SE block directly in
front of BN": the channels are first recalibrated by an SE block (Hu et al.,
2018), then batch-normalised with BN's own affine. As a ``norm_cfg`` type the
baseline is a one-line change of any backbone, exactly like DN.
"""

from typing import Optional

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch import Tensor

from .base import NormLayer
from .sc_module import GroupedFC


@MODELS.register_module('SEBN')
class SEBatchNorm2d(NormLayer):
    r"""An SE block followed by BatchNorm2d, over (N, C, H, W).

    .. math::

        s = \sigma\big(W_2\,\mathrm{ReLU}(W_1\,\mathrm{GAP}(X) + b_1)
            + b_2\big)
        \in \mathbb{R}^{N \times C},\qquad
        Y = \mathrm{BN}(X \cdot s)

    with ``W_1`` (h, C), ``W_2`` (C, h), ``h = max(1, C // r)``, both FCs with
    bias (as in SENet), and BN with its own ``gamma, beta``. This structure
    gives the paper's 3.73M parameters for MobileNetV2 with 100 classes
    (every one of its 52 BN layers preceded by SE, r = 16).

    The FCs are :class:`~dn_mmdet.norm.GroupedFC` (one group), not
    ``nn.Linear``, so that a layer-name ``init_cfg`` of a backbone does not
    re-initialise them; they keep PyTorch's default FC init.

    Checkpoint keys (``<prefix>`` is e.g. ``conv.sebn`` in a ConvModule)::

        <prefix>.se_fc1.weight (h, C) / se_fc1.bias (h,)
        <prefix>.se_fc2.weight (C, h) / se_fc2.bias (C,)
        <prefix>.bn.weight / bias / running_mean / running_var /
            num_batches_tracked

    Args:
        num_features (int): Channels C.
        r (int): Reduction of the SE block, ``h = max(1, C // r)``.
            Default: 16.
        eps (float): BN's epsilon. Default: 1e-5.
        momentum (float | None): BN's momentum. Default: 0.1.
        affine (bool): Whether BN keeps its learnable gamma and beta.
            Default: True.
        track_running_stats (bool): As in BatchNorm2d. Default: True.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _abbr_ = 'sebn'

    def __init__(
        self,
        num_features: int,
        r: int = 16,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(
                f'SEBN(num_features={num_features}): r (SE '
                f'reduction) must be an int >= 1, got {r!r}'
            )
        self.r = r
        hidden = max(1, num_features // r)
        self.se_fc1 = GroupedFC(num_features, hidden, bias=True)
        self.se_fc2 = GroupedFC(hidden, num_features, bias=True)
        self.bn = nn.BatchNorm2d(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
        )

    @property
    def uses_batch_statistics(self) -> bool:
        return self.bn.training or not self.bn.track_running_stats

    def extra_repr(self) -> str:
        return (
            f'{self.num_features}, r={self.r} '
            f'(hidden={self.se_fc1.out_features})'
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        self.check_input(x)
        squeezed = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(squeezed))))
        return self.bn(x * scale[:, :, None, None])
