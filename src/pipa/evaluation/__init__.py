"""Evaluation: confusion-matrix mIoU and the evaluation loop."""

from .metrics import ConfusionMeter, confusion_matrix, iou_from_confusion, mean_iou

__all__ = ["ConfusionMeter", "confusion_matrix", "iou_from_confusion", "mean_iou"]
