"""The SC-Module of Dynamic Normalization: it generates scale and shift.

Structure (WeightNet's FC + grouped FC, arXiv 2007.11823, as DN's Sec. 3.2
describes it)::

    z (N, C) --FC1 (C -> h, bias)--> act --FC2 (h -> 2C, groups, no bias)-->
    split -> alpha_delta (N, C), lambda_delta (N, C)

with ``h = max(1, C // r)`` and ``g`` input channels per group of FC2
(``g='oup'`` is a plain fully connected FC2; DN Sec. 4.1, "The influence of
r / g"). This is exactly the structure that reproduces the paper's parameter
counts (DN Tables 1, 2, 6 and 7).
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer

from .functional import has_forward_hooks


def fc2_groups(hidden: int, num_features: int, g: Union[int, str]) -> int:
    """Number of groups of FC2 for ``g`` input channels per group.

    ``hidden // g`` groups when that divides both ``hidden`` and the ``2C``
    outputs; otherwise the largest group count below it that does (the paper
    lists (r=16, g=2) and (16, 4) although many of MobileNetV2's hidden sizes
    are odd). ``g='oup'`` means one group: a plain fully connected layer.
    """
    if g == 'oup':
        return 1
    groups = max(1, hidden // g)
    while hidden % groups or (2 * num_features) % groups:
        groups -= 1
    return groups


class GroupedFC(nn.Module):
    """A (grouped) fully connected layer on ``(N, in_features)`` vectors.

    Equivalent to a 1x1 ``nn.Conv2d`` on ``(N, C, 1, 1)`` with the same
    ``groups`` (the weight has the conv's shape without the two trailing
    1s), but deliberately *not* an ``nn.Conv2d``/``nn.Linear``: mmengine's
    layer-name initialisers (``dict(type='Normal', layer='Conv2d')`` in a
    detector's ``init_cfg``) would otherwise overwrite the SC-Module's
    zero-initialised FC2, and DN would no longer start as BN.

    Args:
        in_features (int): Input features.
        out_features (int): Output features.
        groups (int): Groups; must divide both feature counts.
        bias (bool): Whether to add a learnable bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.groups = groups
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features // groups)
        )
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's and nn.Linear's default: kaiming uniform, a=sqrt(5).
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            bound = 1 / (self.weight.shape[1] ** 0.5)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_features) -> (N, out_features)."""
        if self.groups == 1:
            return F.linear(x, self.weight, self.bias)
        n = x.shape[0]
        per_group_in = self.in_features // self.groups
        if per_group_in == 1:
            # One input per group (the paper's g=1): each output is its
            # group's input times a weight, a broadcast multiply.
            out = x.repeat_interleave(self.out_features // self.groups, dim=1)
            out = out * self.weight[:, 0]
        else:
            w = self.weight.view(self.groups, -1, per_group_in)
            out = torch.einsum(
                'ngi,goi->ngo', x.view(n, self.groups, per_group_in), w
            )
            out = out.reshape(n, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return (
            f'{self.in_features}, {self.out_features}, '
            f'groups={self.groups}, bias={self.bias is not None}'
        )


class SCModule(nn.Module):
    """Scale-and-shift generator: ``(N, C)`` descriptors -> ``(N, C)`` twice.

    FC2 starts at zero, so a fresh SC-Module outputs ``alpha_delta =
    lambda_delta = 0`` and the DN layer around it starts as BN with
    ``gamma = 1, beta = 0``; FC1 keeps its default init, and gets gradients
    from the first step on through FC2.

    Args:
        num_features (int): Channels C.
        r (int): Reduction of FC1: ``h = max(1, C // r)``.
        g (int | str): Input channels per group of FC2, or ``'oup'`` for a
            fully connected FC2.
        act_cfg (dict | None): Activation after FC1. Sigmoid by default, as
            in WeightNet which DN follows; None for none (as ``ConvModule``'s
            ``act_cfg=None``: FC2 then follows FC1 directly).
    """

    def __init__(
        self,
        num_features: int,
        r: int = 16,
        g: Union[int, str] = 1,
        act_cfg: Optional[dict] = dict(type='Sigmoid'),
    ):
        super().__init__()
        self.num_features = num_features
        hidden = max(1, num_features // r)
        self.fc1 = GroupedFC(num_features, hidden, groups=1, bias=True)
        self.act = (
            nn.Identity()
            if act_cfg is None
            else build_activation_layer(act_cfg)
        )
        self.fc2 = GroupedFC(
            hidden,
            2 * num_features,
            groups=fc2_groups(hidden, num_features, g),
            bias=False,
        )
        nn.init.zeros_(self.fc2.weight)

    def kernel_weights(
        self,
    ) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        """``(fc1.weight, fc1.bias, fc2.weight, fc2.groups)`` for DN's C++
        kernel, which implements this module as built (FC1 with bias, the
        sigmoid, FC2); None when it is not (another activation) or must run
        in torch (forward hooks watch it or a child).

        Read from the modules' own dicts: ``self.fc1.weight`` goes through
        ``nn.Module.__getattr__`` twice, 1-2 us a lookup on a slow vCPU, and
        every forward of a DN layer asks."""
        watched = self.kernel_skips()
        _, fc1, act, fc2 = watched
        if not (
            isinstance(act, nn.Sigmoid)
            and type(fc1) is GroupedFC
            and type(fc2) is GroupedFC
        ):
            return None
        bias = fc1._parameters['bias']
        if bias is None or has_forward_hooks(*watched):
            return None
        return (
            fc1._parameters['weight'],
            bias,
            fc2._parameters['weight'],
            fc2.groups,
        )

    def kernel_skips(self) -> Tuple[nn.Module, ...]:
        """The modules the kernel runs without calling them: this one, FC1,
        its activation and FC2 (forward hooks on any of them send DN to its
        torch path)."""
        modules = self._modules
        return self, modules['fc1'], modules['act'], modules['fc2']

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """FC1 + activation: (N, C) -> (N, h)."""
        return self.act(self.fc1(z))

    def split(self, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """FC2's (N, 2C) output -> (alpha_delta, lambda_delta)."""
        return out[:, : self.num_features], out[:, self.num_features :]

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, C) -> alpha_delta (N, C), lambda_delta (N, C)."""
        return self.split(self.fc2(self.hidden(z)))

    def forward_dn_c(
        self, mean: torch.Tensor, std: torch.Tensor, mode: str
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """DN-C's deltas, shared by the batch, from its statistics.

        The E[X] and Std[X] branches share the FCs (which gives DN-C the
        paper's 3.03M parameters) and are added after FC1 (``mode='C1'``)
        or after FC2 (``'C2'``; DN Table 1, notes 1 and 2).

        Args:
            mean (Tensor): E[X], (C,).
            std (Tensor): Std[X] = sqrt(Var[X] + eps), (C,).
            mode (str): ``'C1'`` or ``'C2'``.

        Returns:
            tuple[Tensor, Tensor]: alpha_delta and lambda_delta, (1, C).
        """
        mean, std = mean[None], std[None]
        if mode == 'C1':
            return self.split(
                self.fc2(self.act(self.fc1(mean) + self.fc1(std)))
            )
        alpha_m, lambda_m = self(mean)
        alpha_s, lambda_s = self(std)
        return alpha_m + alpha_s, lambda_m + lambda_s
