"""Evaluate a segmentor on a labelled dataset (sharded over ranks, confusion all-reduced)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..core.dist import rank, world_size
from ..core.tensors import class_argmax
from .metrics import ConfusionMeter, mean_iou
from .protocols import protocol_logits, subsets
from .temporal import ConsistencyMeter


@dataclass
class EvalResult:
    miou: float  # percent, the protocol's headline mIoU
    per_class_iou: list[float]  # percent, NaN for classes absent from GT and prediction
    confusion: torch.Tensor  # (K, K) int64, rows = ground truth
    subsets: dict[str, float] = field(default_factory=dict)  # every mIoU the protocol reports, labelled
    # clips with flow: percent of visible, labelled pixels whose prediction agrees with the flow-warped
    # prediction of frame t-k (evaluation/temporal.py), and per ground-truth class; None otherwise
    temporal_consistency: float | None = None
    temporal_consistency_per_class: list[float] | None = None


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset: Dataset, num_classes: int, device: torch.device,
             batch_size: int = 16, amp_dtype: torch.dtype | None = None, protocol: Any = None) -> EvalResult:
    """Every rank takes every ``world``-th image (no padding duplicates). ``protocol``: an
    :class:`~pipa.config.EvalConfig` (input resize, whole/slide inference, upsampling, which
    class subsets are averaged); None = whole images at their size, mean over all classes."""
    idx = list(range(rank(), len(dataset), world_size()))  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    meter = ConfusionMeter(num_classes, device)
    consistency: ConsistencyMeter | None = None
    was_training = model.training
    model.eval()

    def predict(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if protocol is None:
                return class_argmax(model(images).logits)
            return class_argmax(protocol_logits(model, images, size, protocol.input_size, protocol.mode,
                                                protocol.crop, protocol.stride, protocol.align_corners))

    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device)
            pred = predict(images, tuple(labels.shape[-2:]))
            meter.update(pred, labels)
            if "prev_image" in batch and "flow" in batch:  # clips with flow: temporal consistency too
                consistency = consistency or ConsistencyMeter(num_classes, device)
                prev = predict(batch["prev_image"].to(device, non_blocking=True), tuple(labels.shape[-2:]))
                valid = batch["flow_valid"].to(device) if "flow_valid" in batch else None
                consistency.update(pred, prev, batch["flow"].to(device), valid, labels)
    finally:
        model.train(was_training)
    meter.all_reduce()
    iou = meter.iou()
    reported = {label: mean_iou(meter.cm, idx) * 100
                for label, idx in subsets(protocol.protocol if protocol is not None else "all", num_classes)}
    headline = next(iter(reported.values()))
    tc = tc_per = None
    if consistency is not None:
        consistency.all_reduce()
        tc, tc_per = consistency.result()
    return EvalResult(headline, (iou * 100).tolist(), meter.cm.cpu(), reported, tc, tc_per)
