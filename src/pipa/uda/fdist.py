"""ImageNet feature distance (DAFormer): keep thing-class encoder features near those of the
frozen initial (pretrained) encoder. Only meaningful with pretrained weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.constants import IGNORE_INDEX


def downscale_label_ratio(labels: Tensor, size: tuple[int, int], min_ratio: float, num_classes: int) -> Tensor:
    """(B, H, W) -> (B, h, w): a cell gets class c if at least ``min_ratio`` of its pixels are c,
    else 255 (ignored pixels count as no class)."""
    lab = labels.masked_fill(labels == IGNORE_INDEX, num_classes)
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    frac = F.adaptive_avg_pool2d(onehot, size)
    best, cls = frac[:, :num_classes].max(1)
    return cls.masked_fill(best < min_ratio, IGNORE_INDEX)


def feature_distance(student_feat: Tensor, frozen_feat: Tensor, labels: Tensor, classes: list[int],
                     num_classes: int, min_ratio: float = 0.75) -> Tensor:
    """Mean L2 distance between (B, C, h, w) feature maps over cells of ``classes``; 0 if none."""
    small = downscale_label_ratio(labels, tuple(student_feat.shape[-2:]), min_ratio, num_classes)
    mask = torch.isin(small, torch.tensor(classes).to(small.device, non_blocking=True)).float()
    dist = torch.norm(student_feat.float() - frozen_feat.float(), dim=1)
    return (dist * mask).sum() / mask.sum().clamp_min(1)  # 0 if no cell qualifies; no host read
