"""``pixel_contrast`` (L_pix, spec "Pixel-wise contrast"): class-balanced anchors among the student's
source and mixed-image cells (source ground truth; target cells labelled by confident teacher
pseudo-labels), contrasted with each other and with the semantic memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import PixelTermConfig
from ...contrast import ImageSampler, PixelContrastLoss, pair_counts
from ...core.tensors import class_counts
from ..context import StepContext, cells, rows_at
from .base import Logs, Term, zero_use
from .embedding import PixelEmbedding


class PixelContrastTerm(Term):
    """Sampler (hardness from the student's own classifier) -> ``h_pix`` on the sampled rows ->
    :class:`~pipa.contrast.PixelContrastLoss` against anchors and memory rows. No segmentor pass."""

    name = "pixel_contrast"
    embedding: PixelEmbedding  # shared with temporal_contrast; registered once, at the method

    def __init__(self, embedding: PixelEmbedding, cfg: PixelTermConfig, num_classes: int, weight: float,
                 start: int = 0) -> None:
        super().__init__(weight, start)
        self.__dict__["embedding"] = embedding  # a plain reference: nn.Module would register it twice
        self.threshold, self.num_classes = cfg.target_threshold, num_classes
        self.sampler = ImageSampler(num_classes, cfg.max_anchors, cfg.max_per_class, cfg.min_pixels, cfg.hard_ratio,
                                    cfg.hard_confidence, cfg.memory_per_class or None)
        self.loss = PixelContrastLoss(cfg.temperature)

    def applies(self, ctx: StepContext) -> bool:
        return ctx.out_mixed is not None and super().applies(ctx)

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:
        assert ctx.out_mixed is not None
        emb = self.embedding
        s, K = ctx.stride, self.num_classes
        labels = torch.cat([ctx.source_cells(), ctx.mixed_cells(self.threshold)]).reshape(-1)
        with torch.no_grad():
            pooled = [F.avg_pool2d(o.logits.detach().float(), s, s, ceil_mode=True)
                      for o in (ctx.out_source, ctx.out_mixed)]
            probs = cells(torch.cat(pooled).softmax(1))
        sample = self.sampler(labels, probs, ctx.generator)
        rows = rows_at([ctx.out_source.features, ctx.out_mixed.features], sample.index)
        anchors, a_lab = emb.project(rows), labels[sample.index]
        mem_f, mem_l = emb.memory_rows(self.sampler.memory_per_class, ctx.generator)
        loss = self.loss(anchors, a_lab, mem_f, mem_l)
        logs = sample.logs("sampler/pixel", ctx.model.class_names)
        pos, neg = pair_counts(a_lab, torch.cat([a_lab, mem_l]), K)
        present = (class_counts(a_lab, K) > 0).float()  # the mean over the classes that have anchors
        n = present.sum().clamp_min(1)
        logs["sampler/pixel/positives"] = (pos * present).sum() / n
        logs["sampler/pixel/negatives"] = (neg * present).sum() / n
        logs["loss/pixel"] = loss.detach()
        return loss, logs

    def idle_loss(self, ctx: StepContext) -> Tensor | None:
        return zero_use(self.embedding.project, ctx)
