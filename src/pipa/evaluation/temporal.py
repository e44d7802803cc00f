"""Temporal consistency of a segmentor on clips: how often the prediction of frame t agrees with
the prediction of frame t−k carried to frame t by the backward flow (pixel p of frame t shows frame
t−k at p + flow(p); nearest neighbour), over pixels that are visible in both (in bounds, flow
valid) and labelled in frame t; overall and per ground-truth class of frame t."""

from __future__ import annotations

import torch
from torch import Tensor

from ..contrast.views import warp_backward
from ..core.constants import IGNORE_INDEX
from ..core.dist import all_reduce_sum
from ..core.tensors import class_counts
from ..data.io import resize_flow


class ConsistencyMeter:
    """Counts agreeing and compared pixels per class (float64, on the device; no host reads)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.agree = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.total = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def update(self, pred: Tensor, pred_prev: Tensor, flow: Tensor, valid: Tensor | None, labels: Tensor) -> None:
        """``pred`` / ``pred_prev`` (B, H, W) class ids on the label grid, ``flow`` (B, 2, h, w) in
        pixels of the image grid (resized to the label grid, each axis scaled), ``valid`` (B, h, w)."""
        H, W = labels.shape[-2:]
        f = resize_flow(flow.float(), (H, W)) if tuple(flow.shape[-2:]) != (H, W) else flow.float()
        warped, inb = warp_backward(pred_prev[:, None].float(), f, mode="nearest")
        ok = inb & (labels != IGNORE_INDEX) & (labels >= 0) & (labels < self.num_classes)
        if valid is not None:
            v = valid if tuple(valid.shape[-2:]) == (H, W) else torch.nn.functional.interpolate(
                valid[:, None].float(), (H, W), mode="nearest")[:, 0] > 0.5
            ok &= v.bool()
        lab = labels.masked_fill(~ok, IGNORE_INDEX)
        self.total += class_counts(lab, self.num_classes).double()
        self.agree += class_counts(lab.masked_fill(warped[:, 0].long() != pred, IGNORE_INDEX), self.num_classes).double()

    def all_reduce(self) -> None:
        all_reduce_sum(self.agree)
        all_reduce_sum(self.total)

    def result(self) -> tuple[float, list[float]]:
        """(percent of compared pixels that agree, the same per class: NaN where none was compared)."""
        overall = float(self.agree.sum() / self.total.sum().clamp_min(1)) * 100
        per = torch.where(self.total > 0, self.agree / self.total.clamp_min(1) * 100, torch.full_like(self.total, float("nan")))
        return overall, per.tolist()
