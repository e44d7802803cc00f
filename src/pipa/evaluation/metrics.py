"""Dataset-level mIoU from an accumulated confusion matrix (the mmseg/ADVENT convention).

Rows are ground truth, columns predictions. Pixels labelled 255 (ignore) are dropped. A class
absent from both ground truth and prediction has union 0: its IoU is NaN and it is left out of
the mean. Under DDP, sum the matrices of all ranks before computing IoU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.constants import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(…) int predictions and labels -> (K, K) int64 counts, ``cm[gt, pred]``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        raise ValueError(f"label value {int(target[bad][0])} outside 0..{num_classes - 1} (and not {ignore_index})")
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError("prediction outside the class range")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def iou_from_confusion(cm: Tensor) -> Tensor:
    """(K, K) -> (K,) float64 IoU per class, NaN where the union is empty."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def mean_iou(cm: Tensor, classes: list[int] | None = None) -> float:
    """Mean IoU over ``classes`` (default all), NaN classes excluded; NaN if none is defined."""
    iou = iou_from_confusion(cm)
    if classes is not None:
        iou = iou[classes]
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else math.nan


class ConfusionMeter:
    """Accumulates a confusion matrix over a whole split."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.cm += confusion_matrix(pred, target.to(pred.device), self.num_classes)

    def all_reduce(self) -> None:
        from ..core.dist import all_reduce_sum

        all_reduce_sum(self.cm)

    def iou(self) -> Tensor:
        return iou_from_confusion(self.cm)

    def miou(self) -> float:
        return mean_iou(self.cm)


def format_table(class_names: list[str], rows: dict[str, list[float]], miou: dict[str, float] | None = None) -> str:
    """Markdown table: one row per run, mIoU then per-class IoU (percent)."""
    head = "| run | mIoU | " + " | ".join(class_names) + " |"
    sep = "|" + "---|" * (len(class_names) + 2)
    lines = [head, sep]
    for name, ious in rows.items():
        m = miou[name] if miou else float("nan")
        cells = ["–" if math.isnan(v) else f"{v:.1f}" for v in ious]
        lines.append(f"| {name} | {m:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_confusion(cm: torch.Tensor, names: list[str]) -> str:
    """Row-normalised confusion matrix (percent of each ground-truth class)."""
    rows = cm.double()
    rows = rows / rows.sum(1, keepdim=True).clamp_min(1) * 100
    width = max(8, max(len(n) for n in names) + 1)
    out = ["confusion (rows: ground truth, % of its pixels; columns: prediction)",
           " " * width + "".join(f"{n[:7]:>8s}" for n in names)]
    for n, r in zip(names, rows.tolist()):
        out.append(f"{n:>{width}s}" + "".join(f"{v:8.1f}" for v in r))
    return "\n".join(out)
