"""MobileNetV2 backbone with a pluggable norm layer and FNA-style feature taps.

The paper's detector (FNA's SSDLite) does not tap MobileNetV2 at stage
boundaries only: its stride-16 feature is the *expansion* output (1x1 conv +
norm + ReLU6, 576 channels) of the first block of the 160-channel stage, taken
before that block's stride-2 depthwise conv. mmdet's ``MobileNetV2`` can only
return whole stages, hence this backbone. Every conv is an mmcv
``ConvModule``, so ``norm_cfg`` selects any registered norm layer, in
particular ``dict(type='DN', r=16, g='oup')`` (Dynamic Normalization).
"""

from typing import Dict, List, Sequence, Tuple

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule

# The root registry, not mmdet's: the backbone is shared by the detector
# (scope 'mmdet') and the stage-1 classifiers (scope 'mmpretrain'), and both
# scopes fall back to the root, as they do for the DN layer.
from mmengine.registry import MODELS
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ...norm import fuse_norm_act
from ...utils.checkpoint import load_checkpoint_strict

# The norm layer used when ``norm_cfg`` is not given: the paper's DN-B
# (r=16, g=oup). The configs always pass ``norm_cfg`` explicitly.
DEFAULT_NORM_CFG = dict(type='DN', r=16, g='oup')


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual block (expand -> depthwise -> project).

    Unlike mmdet's block, it can hand out its expansion output, which is what
    FNA's SSDLite taps (see :meth:`forward_with_expand`).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        stride (int): Stride of the depthwise conv (1 or 2).
        expand_ratio (int): Hidden channels = ``in_channels * expand_ratio``.
            With 1 the expansion conv is omitted (first MobileNetV2 stage).
        conv_cfg (dict, optional): Conv layer config.
        norm_cfg (dict): Norm layer config, used after every conv.
        act_cfg (dict): Activation after the expansion and depthwise convs;
            the projection is linear.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        conv_cfg: OptConfigType = None,
        norm_cfg: ConfigType = dict(type='BN'),
        act_cfg: ConfigType = dict(type='ReLU6'),
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        mid_channels = in_channels * expand_ratio
        self.mid_channels = mid_channels
        self.use_residual = stride == 1 and in_channels == out_channels
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.expand_conv = (
            ConvModule(in_channels, mid_channels, 1, act_cfg=act_cfg, **common)
            if expand_ratio != 1
            else None
        )
        self.depthwise_conv = ConvModule(
            mid_channels,
            mid_channels,
            3,
            stride=stride,
            padding=1,
            groups=mid_channels,
            act_cfg=act_cfg,
            **common,
        )
        self.linear_conv = ConvModule(
            mid_channels, out_channels, 1, act_cfg=None, **common
        )

    def forward_with_expand(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Run the block and also return the expansion output.

        Args:
            x (Tensor): Input of shape (N, C_in, H, W).

        Returns:
            tuple[Tensor, Tensor]: The block output (N, C_out, H', W') and the
            expansion output (N, C_mid, H, W) (``x`` itself when the block has
            no expansion conv).
        """
        expanded = x if self.expand_conv is None else self.expand_conv(x)
        out = self.linear_conv(self.depthwise_conv(expanded))
        if self.use_residual:
            out = out + x
        return out, expanded

    def forward(self, x: Tensor) -> Tensor:
        """Forward (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""
        return self.forward_with_expand(x)[0]


@MODELS.register_module()
class MobileNetV2DN(BaseModule):
    """MobileNetV2 (width 1.0) for detection, any norm, FNA feature taps.

    It is also the backbone of the stage-1 (ImageNet-100) classifiers, with
    ``out_taps=('conv_last',)``, so that their checkpoints' ``backbone.*``
    keys are exactly the detector backbone's (``configs/mobilenet_v2``).

    Layers (torchvision / FNA structure): ``stem`` (3x3 s2 conv, 32 ch),
    ``stage1`` .. ``stage7`` of inverted residual blocks with
    (t, c, n, s) = (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2),
    (6,96,3,1), (6,160,3,2), (6,320,1,1), and ``conv_last`` (1x1, 320 -> 1280).

    Taps (the names accepted by ``out_taps``), with strides:

    - ``'stem'`` (2), ``'stage1'`` (2), ``'stage2'`` (4), ``'stage3'`` (8),
      ``'stage4'`` (16), ``'stage5'`` (16), ``'stage6'`` (32),
      ``'stage7'`` (32), ``'conv_last'`` (32): outputs of those layers.
    - ``'stage{k}_expand'`` for k = 2..7: the expansion output of the first
      block of stage k, before its depthwise conv, at the stride of the
      stage's input. ``'stage6_expand'`` is FNA's 576-channel, stride-16 tap.

    Args:
        out_taps (Sequence[str]): Features to return, in this order.
            Defaults to FNA's ``('stage6_expand', 'conv_last')``.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k (1..7) the
            stem and stages 1..k, 8 also ``conv_last``. Frozen layers are in
            eval mode and get no gradients.
        conv_cfg (dict, optional): Conv layer config.
        norm_cfg (dict): Norm layer config of every conv. Defaults to
            ``DEFAULT_NORM_CFG``.
        act_cfg (dict): Activation config. Defaults to ReLU6.
        norm_eval (bool): Keep every norm layer's running statistics frozen
            in training (BN and DN: DN keeps its statistics in a child
            ``BatchNorm2d``). Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config. Without
            one, convs keep ConvModule's Kaiming init and norm layers their
            own. ``dict(type='Pretrained', checkpoint=PATH, prefix=None)``
            loads a checkpoint strictly: every key of this backbone must be
            present with the right shape and no other key may remain (use
            ``prefix``, e.g. ``'backbone.'``, to select the backbone's part of
            a classifier checkpoint).
    """

    # (expand_ratio, channels, num_blocks, stride) of stage1..stage7.
    arch_settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    stem_channels = 32
    last_channels = 1280

    def __init__(
        self,
        out_taps: Sequence[str] = ('stage6_expand', 'conv_last'),
        frozen_stages: int = -1,
        conv_cfg: OptConfigType = None,
        norm_cfg: ConfigType = None,
        act_cfg: ConfigType = dict(type='ReLU6'),
        norm_eval: bool = False,
        init_cfg: OptMultiConfig = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if norm_cfg is None:
            norm_cfg = dict(DEFAULT_NORM_CFG)
        num_stages = len(self.arch_settings)
        if not (
            isinstance(frozen_stages, int)
            and -1 <= frozen_stages <= num_stages + 1
        ):
            raise ValueError(
                'MobileNetV2DN: frozen_stages must be an int in '
                f'[-1, {num_stages + 1}], got {frozen_stages!r}'
            )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.norm_cfg = norm_cfg

        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.stem = ConvModule(
            3, self.stem_channels, 3, stride=2, padding=1, **common
        )

        # Record every tap's (channels, stride) while building.
        self._tap_specs: Dict[str, Tuple[int, int]] = {
            'stem': (self.stem_channels, 2)
        }
        in_channels, stride_so_far = self.stem_channels, 2
        self.stage_names: List[str] = []
        for i, (t, c, n, s) in enumerate(self.arch_settings, start=1):
            name = f'stage{i}'
            if t != 1:
                self._tap_specs[f'{name}_expand'] = (
                    in_channels * t,
                    stride_so_far,
                )
            blocks = []
            for j in range(n):
                blocks.append(
                    InvertedResidual(
                        in_channels,
                        c,
                        stride=s if j == 0 else 1,
                        expand_ratio=t,
                        conv_cfg=conv_cfg,
                        norm_cfg=norm_cfg,
                        act_cfg=act_cfg,
                    )
                )
                in_channels = c
            stride_so_far *= s
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self._tap_specs[name] = (c, stride_so_far)
        self.conv_last = ConvModule(
            in_channels, self.last_channels, 1, **common
        )
        self._tap_specs['conv_last'] = (self.last_channels, stride_so_far)

        out_taps = tuple(out_taps)
        if not out_taps:
            raise ValueError(
                'MobileNetV2DN: out_taps must name at least one '
                f'tap; valid taps: {self.valid_taps}'
            )
        bad = [tap for tap in out_taps if tap not in self._tap_specs]
        if bad:
            raise ValueError(
                f'MobileNetV2DN: unknown tap(s) {bad} in '
                f'out_taps; valid taps: {self.valid_taps}'
            )
        self.out_taps = out_taps
        # Fused by construction: DN applies the ReLU6 in its output pass (one
        # pass instead of two, which pays back DN's pooling pass).
        fuse_norm_act(self)
        self._freeze_stages()

    @property
    def valid_taps(self) -> List[str]:
        """All tap names, in network order."""
        return list(self._tap_specs)

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of the returned features, in ``out_taps`` order."""
        return tuple(self._tap_specs[tap][0] for tap in self.out_taps)

    @property
    def out_strides(self) -> Tuple[int, ...]:
        """Strides of the returned features, in ``out_taps`` order."""
        return tuple(self._tap_specs[tap][1] for tap in self.out_taps)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Forward an image batch.

        Args:
            x (Tensor): Images of shape (N, 3, H, W).

        Returns:
            tuple[Tensor]: One (N, C_k, ceil(H/s_k), ceil(W/s_k)) map per tap
            in ``out_taps``, with (C_k, s_k) given by ``out_channels`` and
            ``out_strides`` (for the default taps and 320x320 input:
            (N, 576, 20, 20) and (N, 1280, 10, 10)).
        """
        wanted = set(self.out_taps)
        feats: Dict[str, Tensor] = {}
        x = self.stem(x)
        feats['stem'] = x
        for name in self.stage_names:
            blocks = getattr(self, name)
            if f'{name}_expand' in wanted:
                x, feats[f'{name}_expand'] = blocks[0].forward_with_expand(x)
                # Not blocks[1:](x): slicing builds a new Sequential, every
                # forward.
                for block in list(blocks)[1:]:
                    x = block(x)
            else:
                x = blocks(x)
            feats[name] = x
            if wanted.issubset(feats):
                # Later layers are not needed for the requested taps.
                break
        else:
            feats['conv_last'] = self.conv_last(x)
        return tuple(feats[tap] for tap in self.out_taps)

    def _frozen_modules(self) -> List[nn.Module]:
        layers = [self.stem] + [getattr(self, n) for n in self.stage_names]
        layers.append(self.conv_last)
        return layers[: self.frozen_stages + 1]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MobileNetV2DN':
        """Set train/eval mode, keeping frozen layers and (with
        ``norm_eval``) all norm statistics in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            # DN's running statistics live in a child BatchNorm2d, so this
            # loop freezes BN and DN alike.
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """Initialise, loading a ``Pretrained`` init_cfg strictly.

        mmengine's own ``PretrainedInit`` loads non-strictly and only logs
        missing keys, which would silently leave a randomly initialised
        backbone; here a missing file or a key mismatch raises instead.
        """
        cfgs = self.init_cfg or []
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs)
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError(
                'MobileNetV2DN: init_cfg has more than one '
                f'Pretrained entry: {pretrained}'
            )
        self.init_cfg = others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = cfgs or None
        if pretrained:
            cfg = pretrained[0]
            if 'checkpoint' not in cfg:
                raise KeyError(
                    'MobileNetV2DN: the Pretrained init_cfg needs '
                    f'a "checkpoint" key, got {cfg}'
                )
            load_checkpoint_strict(
                self,
                cfg['checkpoint'],
                prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'),
            )
