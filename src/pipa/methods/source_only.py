"""Supervised training on the labelled domain only: ``source_only``; ``source_only_aug`` (the same
strong colour/blur augmentation that the mixed images of self-training get: a baseline that
separates what adaptation adds from what augmentation adds); ``oracle`` when the labelled data is
the target domain's training split."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from ..evaluation.metrics import IGNORE_INDEX
from ..uda.augment import strong_augment
from .base import Batch, UDAMethod, step_generator


class SourceOnly(UDAMethod):
    """``L = CE(student(x_s), y_s)``, 255 ignored."""

    augment_source: ClassVar[bool] = False

    def step(self, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        src = batch["source"]
        image = src["image"]
        if self.augment_source:
            a = self.cfg.method.aug
            image = strong_augment(image, a.jitter_p, a.jitter_strength, a.blur_p, tuple(a.blur_sigma),
                                   step_generator(self.cfg.train.seed, iteration))
        out = self.student(image)
        loss = F.cross_entropy(out.logits.float(), src["label"], ignore_index=IGNORE_INDEX)
        return loss, {"loss/source_ce": float(loss.detach())}


class SourceOnlyAug(SourceOnly):
    augment_source: ClassVar[bool] = True
