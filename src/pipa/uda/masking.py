"""MIC's masked image consistency: random block masks for target images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def block_mask(shape: tuple[int, int, int, int], block: int, ratio: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """(B, 1, H, W) float mask: 0 on a random ``ratio`` of ``block``x``block`` patches, else 1."""
    b, _, h, w = shape
    gh, gw = -(-h // block), -(-w // block)
    keep = (torch.rand(b, 1, gh, gw, generator=generator) > ratio).float().to(device, non_blocking=True)
    return F.interpolate(keep, size=(gh * block, gw * block), mode="nearest")[..., :h, :w]
