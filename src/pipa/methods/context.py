"""The typed record of one training step that a base recipe fills and the terms read.

Shapes: B images per domain, K classes, H×W the batch's image size, C×h×w the decoder feature map
(stride s = H/h, 4 for every encoder here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..contrast.views import pool_labels
from ..core.constants import IGNORE_INDEX
from ..models import Segmentor, SegOutput
from ..uda.teacher import EMATeacher

Batch = dict[str, dict[str, Tensor]]
Forward = Callable[..., SegOutput]


@dataclass
class StepContext:
    """What the base recipe computed in this step; terms build on it and add no pass it already did.

    Source side (every recipe):
      ``source``: ``image`` (B, 3, H, W) in [0, 1], ``label`` (B, H, W) int64 (255 ignored), and with
      rare class sampling ``rcs_class`` (B,). ``out_source``: the student on the source images
      (logits (B, K, H, W), features (B, C, h, w), encoder features).
    Target side (self-training recipes; ``None`` for source-only ones):
      ``target``: ``image`` (B, 3, H, W); on clips also ``prev_image`` (frame τ-k), ``flow``
      (B, 2, H, W) backward flow τ -> τ-k, ``flow_valid`` (B, H, W) bool.
      ``out_teacher``: the EMA teacher on the target images. ``pseudo_label`` (B, H, W) int64,
      ``pseudo_weight`` (B, H, W) float (DACS quality q, 0 on ignored border rows), ``confidence``
      (B, H, W) float (teacher max probability).
      ``mix_mask`` (B, H, W) bool (pasted source pixels), ``mix_image`` (B, 3, H, W) after strong
      augmentation, ``mix_label`` / ``mix_weight`` (B, H, W), ``out_mixed``: the student on it.
      ``teacher_frames``: the teacher on further target frames the terms asked for (``prev_image``),
      computed in the same batch as ``out_teacher``.
    Tools: ``student`` is the student's forward (DDP-wrapped under torchrun: use it for every
    student pass), ``model`` the bare segmentor (normalisation, classes), ``teacher`` the EMA
    teacher, ``augment(images)`` the recipe's strong augmentation, ``generator`` the step's CPU
    generator (every random draw of the step comes from it, in a fixed order: resume is exact).
    """

    iteration: int
    generator: torch.Generator
    model: Segmentor
    student: Forward
    augment: Callable[[Tensor], Tensor]
    source: dict[str, Tensor]
    out_source: SegOutput
    target: dict[str, Tensor] | None = None
    teacher: EMATeacher | None = None
    out_teacher: SegOutput | None = None
    pseudo_label: Tensor | None = None
    pseudo_weight: Tensor | None = None
    confidence: Tensor | None = None
    mix_mask: Tensor | None = None
    mix_image: Tensor | None = None
    mix_label: Tensor | None = None
    mix_weight: Tensor | None = None
    out_mixed: SegOutput | None = None
    teacher_frames: dict[str, SegOutput] = field(default_factory=dict)
    _cache: dict[tuple[str, float], Tensor] = field(default_factory=dict, repr=False)

    # -- derived per-step quantities (computed once, shared by the terms) ------------------------
    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return self.model.num_classes

    @property
    def stride(self) -> int:
        """Image pixels per decoder feature cell, from both sides (a padded encoder gives
        ⌈H/s⌉ × ⌈W/s⌉ cells: 1914 pixels -> 479 cells is stride 4, not 1914 // 479 = 3)."""
        H, W = self.source["image"].shape[-2:]
        h, w = self.out_source.features.shape[-2:]
        s = max(1, round(W / w))
        if -(-H // s) != h or -(-W // s) != w:
            raise ValueError(f"feature map {h}x{w} is not a whole stride of the {H}x{W} input")
        return s

    def source_cells(self) -> Tensor:
        """(B, h, w) source ground truth pooled to feature cells (majority label, 255 if mixed)."""
        key = ("source", 0.0)
        if key not in self._cache:
            self._cache[key] = pool_labels(self.source["label"], self.stride, self.num_classes)
        return self._cache[key]

    def mixed_cells(self, threshold: float) -> Tensor:
        """(B, h, w) labels of the mixed image's cells: source ground truth where pasted, teacher
        pseudo-labels with confidence above ``threshold`` elsewhere, else 255."""
        key = ("mixed", threshold)
        if key not in self._cache:
            assert self.mix_label is not None and self.mix_mask is not None and self.confidence is not None
            lbl = self.mix_label.clone()
            lbl = lbl.masked_fill(~self.mix_mask & (self.confidence <= threshold), IGNORE_INDEX)
            self._cache[key] = pool_labels(lbl, self.stride, self.num_classes)
        return self._cache[key]

    def debug_images(self) -> dict[str, Tensor]:
        """The debug grid's panels (source, labels, target, mixed image, mask, pseudo-label, weight)."""
        out = {"source": self.source["image"], "source_label": self.source["label"]}
        if self.target is not None and self.mix_image is not None:
            assert self.mix_mask is not None and self.pseudo_label is not None and self.mix_weight is not None
            out.update({"target": self.target["image"], "mixed": self.mix_image.detach(), "mask": self.mix_mask,
                        "pseudo_label": self.pseudo_label, "weight": self.mix_weight})
            if "label" in self.target:
                out["target_label"] = self.target["label"]
        return out


def cells(x: Tensor) -> Tensor:
    """(B, C, h, w) feature map -> (B·h·w, C) rows, in (b, y, x) order."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def rows_at(maps: Tensor | list[Tensor], index: Tensor) -> Tensor:
    """``cells(torch.cat(maps))[index]`` without copying the whole maps: (B, C, h, w) map(s) and
    (n,) row indices in (map, b, y, x) order -> (n, C), gathered straight from each map (the
    backward writes only these rows). Maps of one (C, h, w)."""
    maps = [maps] if isinstance(maps, Tensor) else maps
    out = None
    offset = 0
    for x in maps:
        B, C, h, w = x.shape
        n = B * h * w
        local = (index - offset).clamp(0, n - 1)
        rows = x.flatten(2)[local // (h * w), :, local % (h * w)]  # (n_index, C)
        if out is None:
            out = rows
        else:
            out = torch.where((index >= offset)[:, None], rows, out)
        offset += n
    assert out is not None
    return out
