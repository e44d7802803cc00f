"""Small tensor helpers that keep a step on the device (no host synchronisation)."""

from __future__ import annotations

import torch
from torch import Tensor

from .constants import IGNORE_INDEX


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes,) int64 rows of each class; 255 not counted. Unlike ``bincount`` it never reads
    the labels' maximum on the host (no GPU synchronisation)."""
    idx = torch.where(labels == IGNORE_INDEX, num_classes, labels.clamp(0, num_classes - 1)).reshape(-1)
    out = torch.zeros(num_classes + 1, dtype=torch.long, device=labels.device)
    return out.scatter_add_(0, idx, torch.ones_like(idx))[:num_classes]


def class_argmax(x: Tensor, dim: int = 1) -> Tensor:
    """``x.argmax(dim)``, the first maximal index as argmax gives it, computed with ``max``: on CPU
    torch's argmax over a dimension that is not the last is ~10x slower than ``max`` (8 ms against
    0.5 ms on the demo's (16, 8, 24, 48) logits, 41 ms against 5 ms on a batch of 96x192 logits)."""
    return x.max(dim).indices


def read_scalars(values: dict[str, Tensor | float]) -> dict[str, float]:
    """A step's logs (0-d tensors on the device, or floats) as floats, with one host read for all."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in values.items() if not torch.is_tensor(v)}
    if keys:
        vals = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()  # type: ignore[union-attr]
        out.update(zip(keys, vals))
    return {k: out[k] for k in values}


def window_positions(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows of ``crop`` pixels, ``stride`` apart, along an axis of ``size``
    pixels; the last window ends flush with the border (mmseg's slide inference). One window at 0 when
    the axis is not longer than the window."""
    if size <= crop:
        return [0]
    pos = list(range(0, size - crop + 1, stride))
    if pos[-1] != size - crop:
        pos.append(size - crop)
    return pos
