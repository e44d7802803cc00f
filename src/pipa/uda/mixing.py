"""Cross-domain ClassMix (DACS): paste half of the source classes onto the target image."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.constants import IGNORE_INDEX


def classmix_masks(src_labels: Tensor, must_include: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """(B, H, W) source labels -> (B, H, W) bool masks of the pasted pixels.

    For each image, ``ceil(n/2)`` of its ``n`` classes (255 is never a class) are chosen at random.
    ``must_include`` (B,) forces one class per image into the chosen set (rare class sampling's
    class, so rare classes are the ones pasted; -1 = no constraint)."""
    masks = []
    for b in range(src_labels.shape[0]):
        classes = torch.unique(src_labels[b])
        classes = classes[classes != IGNORE_INDEX]
        n = classes.numel()
        perm = torch.randperm(n, generator=generator).to(classes.device)
        chosen = classes[perm[: (n + 1) // 2]]
        if must_include is not None and int(must_include[b]) >= 0:
            c = must_include[b].to(classes.device).view(1)
            if (classes == c).any() and not (chosen == c).any():
                chosen = torch.cat([chosen[1:], c]) if chosen.numel() else c
        masks.append(torch.isin(src_labels[b], chosen))
    return torch.stack(masks)


def classmix(mask: Tensor, src_img: Tensor, tgt_img: Tensor, src_lbl: Tensor, tgt_lbl: Tensor,
             tgt_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x = M x_s + (1-M) x_t``, ``y = M y_s + (1-M) ȳ_t``, ``w = M + (1-M) q``."""
    m = mask.unsqueeze(1)
    img = torch.where(m, src_img, tgt_img)
    lbl = torch.where(mask, src_lbl, tgt_lbl)
    w = torch.where(mask, torch.ones_like(tgt_weight), tgt_weight)
    return img, lbl, w
