"""Supervised training on the labelled domain only (``source_only``; ``oracle`` when the
labelled data is the target domain's training split)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..evaluation.metrics import IGNORE_INDEX
from .base import Batch, UDAMethod


class SourceOnly(UDAMethod):
    """``L = CE(student(x_s), y_s)``, 255 ignored."""

    def step(self, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        src = batch["source"]
        out = self.student(src["image"])
        loss = F.cross_entropy(out.logits.float(), src["label"], ignore_index=IGNORE_INDEX)
        return loss, {"loss/source_ce": float(loss.detach())}
