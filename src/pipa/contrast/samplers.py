"""Task-smart sampling (method spec, "Task-smart sampling"): miners that pick anchors and the
contrast set. They run under ``no_grad``, return index tensors and statistics, and never compute
a loss. Hardness comes from the student's own trained classifier (the published code used an
untrained auxiliary head), or for video from the temporal instability of its predictions.

Labels are feature-cell labels (255 = ignore, never a class)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.constants import IGNORE_INDEX
from ..core.tensors import class_counts


@dataclass
class Sample:
    """``index`` (A,) int64 into the candidate rows; ``hard`` (A,) bool; ``stats`` per class."""

    index: Tensor
    hard: Tensor
    anchors_per_class: list[int] = field(default_factory=list)
    hard_per_class: list[int] = field(default_factory=list)

    def logs(self, prefix: str, class_names: list[str] | None = None) -> dict[str, float]:
        """Anchor and hard counts, in total and per class: ``{prefix}/anchors_{class}`` etc."""
        names = class_names or [str(c) for c in range(len(self.anchors_per_class))]
        out = {f"{prefix}/anchors": float(self.index.numel()), f"{prefix}/hard": float(sum(self.hard_per_class))}
        for c, name in enumerate(names):
            if c < len(self.anchors_per_class) and self.anchors_per_class[c]:
                out[f"{prefix}/anchors_{name}"] = float(self.anchors_per_class[c])
                out[f"{prefix}/hard_{name}"] = float(self.hard_per_class[c])
        return out


@torch.no_grad()
def class_balanced(labels: Tensor, hard: Tensor, num_classes: int, max_anchors: int, max_per_class: int,
                   min_pixels: int, hard_ratio: float, generator: torch.Generator | None = None) -> Sample:
    """Pick at most ``min(max_per_class, max_anchors // #classes)`` rows of each class having at
    least ``min_pixels`` rows; ``round(hard_ratio · n)`` of a class's ``n`` picks are hard rows
    (fewer if it has fewer), the rest random easy rows, topped up from whichever kind is left.

    Shape: labels (N,) int64, hard (N,) bool -> :class:`Sample`."""
    if labels.shape != hard.shape or labels.dim() != 1:
        raise ValueError(f"labels and hard must be (N,), got {tuple(labels.shape)} and {tuple(hard.shape)}")
    if not 0.0 <= hard_ratio <= 1.0:
        raise ValueError(f"hard_ratio must be in [0, 1], got {hard_ratio}")
    dev = labels.device
    # one host read for the whole call: rows and hard rows of each class
    hard_labels = torch.where(hard, labels, IGNORE_INDEX)
    n_rows, n_hard_rows = torch.stack([class_counts(labels, num_classes), class_counts(hard_labels, num_classes)]).tolist()
    present = [c for c in range(num_classes) if n_rows[c] >= max(min_pixels, 1)]
    per_anchor, per_hard = [0] * num_classes, [0] * num_classes
    if not present:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return Sample(empty, torch.zeros(0, dtype=torch.bool, device=dev), per_anchor, per_hard)
    quota = min(max_per_class, max_anchors // len(present))
    # rows sorted by (class, easy): each class's hard rows then its easy rows, each in row order
    key = torch.where(labels == IGNORE_INDEX, num_classes, labels.clamp(0, num_classes - 1)) * 2 + (~hard).long()
    order = torch.sort(key, stable=True).indices
    starts = [0]
    for c in range(num_classes):
        starts.append(starts[-1] + n_rows[c])
    picks, flags = [], []
    for c in present:
        h_c, e_c = n_hard_rows[c], n_rows[c] - n_hard_rows[c]
        n = min(quota, n_rows[c])
        n_hard = min(int(round(hard_ratio * n)), h_c)
        n_easy = min(n - n_hard, e_c)
        n_hard = min(n - n_easy, h_c)  # top up with hard rows when easy ones run out
        picks += [starts[c] + torch.randperm(h_c, generator=generator)[:n_hard],
                  starts[c] + h_c + torch.randperm(e_c, generator=generator)[:n_easy]]
        flags += [True] * n_hard + [False] * n_easy
        per_anchor[c], per_hard[c] = n_hard + n_easy, n_hard
    pos = torch.cat(picks).to(dev, non_blocking=True)
    return Sample(order[pos], torch.tensor(flags, dtype=torch.bool).to(dev, non_blocking=True), per_anchor, per_hard)


class ImageSampler:
    """Image task: class-balanced anchors, a ``hard_ratio`` share of them pixels the student gets
    wrong (argmax differs from the label) or is unsure of (max probability < ``hard_confidence``).
    Negatives come mainly from the memory (``memory_per_class`` entries of each class)."""

    def __init__(self, num_classes: int, max_anchors: int = 1024, max_per_class: int = 128, min_pixels: int = 8,
                 hard_ratio: float = 0.5, hard_confidence: float = 0.9, memory_per_class: int | None = None) -> None:
        self.num_classes, self.max_anchors, self.max_per_class = num_classes, max_anchors, max_per_class
        self.min_pixels, self.hard_ratio, self.hard_confidence = min_pixels, hard_ratio, hard_confidence
        self.memory_per_class = memory_per_class

    @torch.no_grad()
    def hardness(self, labels: Tensor, probs: Tensor) -> Tensor:
        """labels (N,), student probabilities (N, K) -> hard (N,) bool."""
        conf, pred = probs.max(1)
        return (pred != labels) | (conf < self.hard_confidence)

    @torch.no_grad()
    def __call__(self, labels: Tensor, probs: Tensor, generator: torch.Generator | None = None) -> Sample:
        return class_balanced(labels, self.hardness(labels, probs), self.num_classes, self.max_anchors,
                              self.max_per_class, self.min_pixels, self.hard_ratio, generator)


class VideoSampler:
    """Video task: hard anchors are temporally unstable cells (the student's argmax at frame τ
    differs from the flow-warped, or co-located, argmax at τ-k). The contrast set comes from the
    neighbouring frame (class-balanced, ``max_contrast`` rows); the memory adds fewer entries
    (``memory_per_class``)."""

    def __init__(self, num_classes: int, max_anchors: int = 1024, max_per_class: int = 128, min_pixels: int = 8,
                 hard_ratio: float = 0.5, max_contrast: int = 2048, memory_per_class: int | None = 32) -> None:
        self.num_classes, self.max_anchors, self.max_per_class = num_classes, max_anchors, max_per_class
        self.min_pixels, self.hard_ratio, self.max_contrast = min_pixels, hard_ratio, max_contrast
        self.memory_per_class = memory_per_class

    @torch.no_grad()
    def hardness(self, pred: Tensor, prev_pred: Tensor, prev_valid: Tensor) -> Tensor:
        """pred (N,) at τ, prev_pred (N,) the τ-k prediction brought to the same cells, prev_valid
        (N,) bool (in bounds) -> unstable (N,) bool."""
        return prev_valid & (pred != prev_pred)

    @torch.no_grad()
    def __call__(self, labels: Tensor, pred: Tensor, prev_pred: Tensor, prev_valid: Tensor,
                 generator: torch.Generator | None = None) -> Sample:
        return class_balanced(labels, self.hardness(pred, prev_pred, prev_valid), self.num_classes, self.max_anchors,
                              self.max_per_class, self.min_pixels, self.hard_ratio, generator)

    @torch.no_grad()
    def contrast(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Class-balanced rows of the neighbouring frame, at most ``max_contrast``: (C,) int64."""
        none = torch.zeros_like(labels, dtype=torch.bool)
        per_class = max(1, self.max_contrast // self.num_classes)
        return class_balanced(labels, none, self.num_classes, self.max_contrast, per_class, 1, 0.0, generator).index


@torch.no_grad()
def pair_counts(anchor_labels: Tensor, contrast_labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mean positives and negatives per anchor of each class, (K,) float each (an anchor's own
    row is not counted, as in :class:`~pipa.contrast.losses.PixelContrastLoss`)."""
    n_c = class_counts(contrast_labels, num_classes).float()
    a_c = class_counts(anchor_labels, num_classes).float()
    n_valid = (contrast_labels != IGNORE_INDEX).sum()
    pos = torch.where(a_c > 0, n_c - 1, torch.zeros_like(n_c)).clamp_min(0)
    neg = torch.where(a_c > 0, n_valid - n_c, torch.zeros_like(n_c))
    return pos, neg


@dataclass
class PatchSample:
    """Rows of the two views of L_patch that take part: ``k1``/``k2`` (A,) positive pairs (view-1
    row, view-2 row), ``q1``/``q2`` the negatives drawn from each view, ``valid`` (A, |q1|+|q2|)
    bool: which negatives count for each anchor."""

    k1: Tensor
    k2: Tensor
    q1: Tensor
    q2: Tensor
    valid: Tensor


class PatchSampler:
    """Patch task: at most ``max_anchors`` positive pairs (random), ``num_negatives`` rows split
    between the two views; a negative counts for an anchor if its pseudo-label differs
    (``semantic``) or if it is another image cell (``location``)."""

    def __init__(self, max_anchors: int = 256, num_negatives: int = 256, negatives: str = "semantic") -> None:
        if negatives not in ("semantic", "location"):
            raise ValueError(f"patch negatives must be semantic or location, got {negatives!r}")
        self.max_anchors, self.num_negatives, self.negatives = max_anchors, num_negatives, negatives

    @torch.no_grad()
    def __call__(self, k1: Tensor, k2: Tensor, lab1: Tensor, lab2: Tensor, ids1: Tensor, ids2: Tensor,
                 generator: torch.Generator | None = None) -> PatchSample:
        """``k1``/``k2`` (P,) all positive pairs; ``lab*``/``ids*`` (N1,)/(N2,) each view row's
        pseudo-label and global cell id -> :class:`PatchSample`."""
        if k1.numel() > self.max_anchors:
            keep = torch.randperm(k1.numel(), generator=generator)[: self.max_anchors].to(k1.device, non_blocking=True)
            k1, k2 = k1[keep], k2[keep]
        n1 = min(self.num_negatives // 2, lab1.shape[0])
        n2 = min(self.num_negatives - n1, lab2.shape[0])
        q1 = torch.randperm(lab1.shape[0], generator=generator)[:n1]
        q2 = torch.randperm(lab2.shape[0], generator=generator)[:n2]
        dev = lab1.device
        k1, k2 = k1.to(dev, non_blocking=True), k2.to(dev, non_blocking=True)
        q1, q2 = q1.to(dev, non_blocking=True), q2.to(dev, non_blocking=True)
        if self.negatives == "semantic":
            a_lab = lab1[k1]
            n_lab = torch.cat([lab1[q1], lab2[q2]])
            valid = a_lab[:, None] != n_lab[None, :]
        else:
            valid = ids1[k1][:, None] != torch.cat([ids1[q1], ids2[q2]])[None, :]
        return PatchSample(k1, k2, q1, q2, valid)
