"""Evaluate a segmentor on a labelled dataset (sharded over ranks, confusion all-reduced)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..engine.distributed import rank, world_size
from .metrics import ConfusionMeter


@dataclass
class EvalResult:
    miou: float  # percent
    per_class_iou: list[float]  # percent, NaN for classes absent from GT and prediction
    confusion: torch.Tensor  # (K, K) int64, rows = ground truth


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset: Dataset, num_classes: int, device: torch.device,
             batch_size: int = 16, amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Whole-image inference; every rank takes every ``world``-th image, no padding duplicates."""
    idx = list(range(rank(), len(dataset), world_size()))  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    meter = ConfusionMeter(num_classes, device)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images).logits
            meter.update(logits.argmax(1), batch["label"].to(device))
    finally:
        model.train(was_training)
    meter.all_reduce()
    iou = meter.iou()
    return EvalResult(meter.miou() * 100, (iou * 100).tolist(), meter.cm.cpu())
