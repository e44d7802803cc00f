"""Decoders that fuse the four encoder levels into one stride-4 feature map ``F``.

``DAFormerHead``: each level projected to C channels, upsampled to stride 4, concatenated, then
fused by an ASPP-like block of dilated depthwise-separable convs (DAFormer's context-aware
fusion). ``MLPHead``: SegFormer's all-MLP head (1x1 projections, concat, 1x1 fusion).
Both return the fused feature map; the classifier lives in the segmentor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _upsample_cat(feats: list[Tensor]) -> Tensor:
    # the coarser maps are always resized (an identity where sizes already match): no branch on
    # shapes, so an exported graph keeps a symbolic input size
    size = feats[0].shape[-2:]
    return torch.cat([feats[0]] + [F.interpolate(f, size, mode="bilinear", align_corners=False) for f in feats[1:]], 1)


class _SepConv(nn.Sequential):
    """Depthwise-separable 3x3 conv (dilated) + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DAFormerHead(nn.Module):
    """Input: 4 maps (B, C_i, H_i, W_i); output: (B, channels, H_0, W_0).

    ``separable``: depthwise-separable dilated convs (DAFormer); plain dilated 3x3 convs are
    faster on CPUs, where depthwise kernels are slow. ``squeeze``: reduce the concatenation to
    ``channels`` with a 1x1 conv before the context block (cheaper; DAFormer does not).
    ``bottleneck_kernel``: 3 (DAFormer) or 1."""

    def __init__(self, in_channels: list[int], channels: int = 256, dilations: list[int] = (1, 6, 12, 18),
                 separable: bool = True, squeeze: bool = False, bottleneck_kernel: int = 3) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        cat = channels * len(in_channels)
        self.squeeze: nn.Module = nn.Identity()
        if squeeze:
            self.squeeze = nn.Sequential(nn.Conv2d(cat, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            cat = channels
        branches: list[nn.Module] = []
        for d in dilations:
            if d == 1:
                branches.append(nn.Sequential(nn.Conv2d(cat, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))
            elif separable:
                branches.append(_SepConv(cat, channels, d))
            else:
                branches.append(nn.Sequential(nn.Conv2d(cat, channels, 3, padding=d, dilation=d, bias=False),
                                              nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))
        self.aspp = nn.ModuleList(branches)
        k = bottleneck_kernel
        self.bottleneck = nn.Sequential(
            nn.Conv2d(channels * len(dilations), channels, k, padding=k // 2, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.squeeze(_upsample_cat([p(f) for p, f in zip(self.proj, feats)]))
        return self.bottleneck(torch.cat([b(x) for b in self.aspp], 1))


class MLPHead(nn.Module):
    """SegFormer all-MLP decoder. Input: 4 maps; output: (B, channels, H_0, W_0)."""

    def __init__(self, in_channels: list[int], channels: int = 256) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.fuse = nn.Sequential(nn.Conv2d(channels * len(in_channels), channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.fuse(_upsample_cat([p(f) for p, f in zip(self.proj, feats)]))
