"""HRDA's multi-resolution segmentation (Hoyer et al., ECCV 2022), as a mode of :class:`Segmentor`.

One encoder and decoder see two views of an image:

- the **context**: the whole input downscaled by ``s = context_scale`` (0.5), giving low-resolution
  logits ``LR`` and the decoder map on a grid of stride ``4 / s`` (8) input pixels;
- the **detail**: a full-resolution crop (``detail_crop``, 512²) whose corners lie on multiples of
  ``crop_divisible`` (8), giving ``HR`` on a stride-4 grid. At inference (and for the teacher's
  pseudo-labels) the detail prediction covers the whole input by overlapping windows of the crop
  size, ``crop / 2`` apart, averaged where they overlap.

A scale-attention head on the context's encoder features predicts ``a = σ(att)`` (one map per class);
in training it is zeroed outside the detail crop. Fused logits, on the stride-4 grid of the input:

    fused = up(a) · HR_inserted + up((1 − a) · LR)

(``up``: bilinear ×1/s; ``HR_inserted``: HR placed at the crop, 0 elsewhere), then upsampled to the
input size. Training losses: ``(1 − λ_d) · CE(fused) + λ_d · CE(HR, labels of the crop)``
(:func:`seg_loss`). The attention head is part of the deployed model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.syncs import on_host
from ..core.tensors import window_positions

if TYPE_CHECKING:  # pragma: no cover
    from ..config import HRDAConfig

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2) in input pixels


@dataclass
class Detail:
    """The detail branch of a training pass: ``logits`` (B, K, ch, cw) at the crop's full resolution
    and the crop ``box`` (y1, y2, x1, x2) in input pixels (labels of the crop: ``label[..., y1:y2, x1:x2]``)."""

    logits: Tensor
    box: Box


class ScaleAttentionHead(nn.Module):
    """HRDA's lightweight attention head: per-level 1×1 projections to ``channels``, upsampled to the
    finest level and concatenated, one 1×1 conv + BN + ReLU (HRDA replaces the DAFormer head's ASPP
    by this), dropout and a 1×1 classifier to K maps (class-wise) or 1. Returns logits (σ is applied
    by the caller)."""

    def __init__(self, in_channels: list[int], channels: int, out_maps: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.fuse = nn.Sequential(nn.Conv2d(channels * len(in_channels), channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, out_maps, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        x = [p(f) if i == 0 else F.interpolate(p(f), size, mode="bilinear", align_corners=False)
             for i, (p, f) in enumerate(zip(self.proj, feats))]
        return self.classifier(self.dropout(self.fuse(torch.cat(x, 1))))


def draw_box(height: int, width: int, crop: tuple[int, int], divisible: int, generator: torch.Generator | None) -> Box:
    """A random detail crop of ``crop`` (clipped to the input) with corners on multiples of
    ``divisible``: offsets uniform over ``{0, d, ..., d·(⌊(margin + 1) / d⌋ − 1)}`` (HRDA's
    ``get_crop_bbox``). One box per batch, drawn from ``generator``."""
    ch, cw = min(crop[0], height), min(crop[1], width)
    # the reference draws from (margin + 1) // d offsets: with a margin that is a multiple of d the
    # last offset (flush with the border) is never drawn; kept for parity
    ny, nx = max(1, (height - ch + 1) // divisible), max(1, (width - cw + 1) // divisible)
    y = int(on_host(torch.randint(0, ny, (1,), generator=generator))) * divisible  # CPU draws: no device sync
    x = int(on_host(torch.randint(0, nx, (1,), generator=generator))) * divisible
    return y, y + ch, x, x + cw


def fuse(lr: Tensor, att: Tensor, hr: Tensor, box: Box | None, size: tuple[int, int]) -> Tensor:
    """HRDA's fusion on the detail grid ``size`` (h, w) (stride 4 of the input): ``lr`` and ``att``
    (B, K|1, ·, ·) on the context grid; ``hr`` (B, K, ·, ·) on the detail grid, of the crop ``box``
    (given in cells of the detail grid) or of the whole input (``box`` None). Outside the box the
    attention is 0 (the context prediction alone)."""
    if box is not None:
        y1, y2, x1, x2 = box
        ry, rx = lr.shape[-2] / size[0], lr.shape[-1] / size[1]
        mask = torch.zeros_like(att[:, :1])
        mask[..., round(y1 * ry):round(y2 * ry), round(x1 * rx):round(x2 * rx)] = 1
        att = att * mask
    up_lr = F.interpolate((1 - att) * lr, size, mode="bilinear", align_corners=False)
    up_att = F.interpolate(att, size, mode="bilinear", align_corners=False)
    if box is not None:
        placed = torch.zeros_like(up_lr)
        placed[..., y1:y2, x1:x2] = hr
        hr = placed
    return up_att * hr + up_lr


def slide(branch, images: Tensor, crop: tuple[int, int], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The detail branch over the whole input by windows of ``crop``, ``crop / 2`` apart (the last one
    flush with the border), in one batch: ``branch(windows) -> (logits, features)`` on the stride-4
    grid; both averaged where windows overlap, on the (h, w) ``grid`` of the input."""
    B, _, H, W = images.shape
    ch, cw = min(crop[0], H), min(crop[1], W)
    boxes = [(y, x) for y in window_positions(H, ch, max(1, ch // 2)) for x in window_positions(W, cw, max(1, cw // 2))]
    logits, feats = branch(torch.cat([images[..., y:y + ch, x:x + cw] for y, x in boxes]))
    sy, sx = H / grid[0], W / grid[1]
    out_l = logits.new_zeros(B, logits.shape[1], *grid)
    out_f = feats.new_zeros(B, feats.shape[1], *grid)
    count = logits.new_zeros(1, 1, *grid)
    for i, (y, x) in enumerate(boxes):
        cy, cx = round(y / sy), round(x / sx)
        h, w = logits.shape[-2:]
        out_l[..., cy:cy + h, cx:cx + w] += logits[i * B:(i + 1) * B]
        out_f[..., cy:cy + h, cx:cx + w] += feats[i * B:(i + 1) * B]
        count[..., cy:cy + h, cx:cx + w] += 1
    return out_l / count, out_f / count


def seg_loss(logits: Tensor, detail: Detail | None, labels: Tensor, weight: Tensor | None, detail_weight: float,
             ce) -> Tensor:
    """HRDA's loss: ``(1 − λ_d) · ce(fused) + λ_d · ce(detail, labels of the crop)``; without a detail
    branch just ``ce(logits)``. ``ce(logits, labels, weight|None)`` is the recipe's cross-entropy."""
    if detail is None:
        return ce(logits, labels, weight)
    y1, y2, x1, x2 = detail.box
    crop_w = None if weight is None else weight[..., y1:y2, x1:x2]
    return (1 - detail_weight) * ce(logits, labels, weight) + detail_weight * ce(
        detail.logits, labels[..., y1:y2, x1:x2], crop_w)


def hrda_config_check(cfg: "HRDAConfig") -> None:
    """Raise a one-line error for settings the fusion cannot align."""
    s = cfg.context_scale
    if abs(round(1 / s) - 1 / s) > 1e-6:
        raise ValueError(f"config key 'model.hrda.context_scale': 1/{s} must be a whole number (0.5, 0.25, ...)")
    cell = round(4 / s)
    if cfg.crop_divisible % cell:
        raise ValueError(f"config key 'model.hrda.crop_divisible': {cfg.crop_divisible} must be a multiple of "
                         f"{cell} (the context grid's stride, 4 / context_scale), or the crop is not on its cells")
    for v in cfg.detail_crop:
        if v % cell:
            raise ValueError(f"config key 'model.hrda.detail_crop': {cfg.detail_crop} must be multiples of {cell}")
