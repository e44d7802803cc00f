"""Cross-domain ClassMix (DACS): paste half of the source classes onto the target image."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.constants import IGNORE_INDEX
from ..core.syncs import on_host
from ..core.tensors import class_counts


def classmix_masks(src_labels: Tensor, must_include: Tensor | None = None,
                   generator: torch.Generator | None = None, num_classes: int | None = None) -> Tensor:
    """(B, H, W) source labels -> (B, H, W) bool masks of the pasted pixels.

    For each image, ``ceil(n/2)`` of its ``n`` classes (255 is never a class) are chosen at random.
    ``must_include`` (B,) forces one class per image into the chosen set (rare class sampling's
    class, so rare classes are the ones pasted; -1 = no constraint). The classes present are read
    on the host once for the whole batch (labels must lie in [0, num_classes) or be 255)."""
    B = src_labels.shape[0]
    K = num_classes if num_classes is not None else int(src_labels.masked_fill(src_labels == IGNORE_INDEX, 0).max()) + 1
    present = torch.stack([class_counts(src_labels[b], K) > 0 for b in range(B)]).long()
    forced = must_include.to(present.device, non_blocking=True).view(B, 1) if must_include is not None else present.new_full((B, 1), -1)
    rows = torch.cat([present, forced], 1).tolist()  # the one host read
    table = torch.zeros(B, K + 1, dtype=torch.bool)  # table[b, c]: class c of image b is pasted; K: 255
    for b, row in enumerate(rows):
        classes = [c for c in range(K) if row[c]]
        n = len(classes)
        chosen = [classes[i] for i in on_host(torch.randperm(n, generator=generator)[: (n + 1) // 2]).tolist()]
        c = row[K]
        if c >= 0 and c in classes and c not in chosen:
            chosen = chosen[1:] + [c]
        table[b, chosen] = True
    idx = torch.where(src_labels == IGNORE_INDEX, K, src_labels.clamp(0, K - 1)).flatten(1)
    return table.to(src_labels.device, non_blocking=True).gather(1, idx).view_as(src_labels)


def classmix(mask: Tensor, src_img: Tensor, tgt_img: Tensor, src_lbl: Tensor, tgt_lbl: Tensor,
             tgt_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x = M x_s + (1-M) x_t``, ``y = M y_s + (1-M) ȳ_t``, ``w = M + (1-M) q``."""
    m = mask.unsqueeze(1)
    img = torch.where(m, src_img, tgt_img)
    lbl = torch.where(mask, src_lbl, tgt_lbl)
    w = torch.where(mask, torch.ones_like(tgt_weight), tgt_weight)
    return img, lbl, w
