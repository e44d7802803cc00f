"""``patch_contrast`` (L_patch): two views of the same target patch must embed alike, cell by
cell, against negatives from both views.

``student_teacher`` (default): a stride-aligned crop of the target image through the student vs.
the teacher's map of the whole image (from the context: no extra teacher pass) cut to the crop.
``student_student``: two overlapping crops, both through the student."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ...config import PatchTermConfig, TeacherConfig
from ...contrast import (PatchContrastLoss, PatchSampler, ProjectionHead, block_ids, overlap_cells, pool_labels,
                         sample_boxes, sample_view_pair)
from ...uda.teacher import EMATeacher
from ..context import StepContext, cells
from .base import Logs, Term, zero_use


@dataclass
class PatchViews:
    """Cells of the two views: ``m1``/``m2`` (N1, C)/(N2, C) feature rows; ``k1[i]`` and ``k2[i]``
    index the same image cell in each (the positive pairs); ``lab*``/``ids*`` give each row's
    teacher pseudo-label and global cell id; ``teacher2``: view 2 is the teacher's map."""

    m1: Tensor
    m2: Tensor
    k1: Tensor
    k2: Tensor
    lab1: Tensor
    lab2: Tensor
    ids1: Tensor
    ids2: Tensor
    teacher2: bool


class PatchContrastTerm(Term):
    """Owns ``h_patch`` and its EMA copy. One extra student pass (on the crops)."""

    name = "patch_contrast"
    project: Callable[[Tensor], Tensor]  # the head's forward, DDP-wrapped under torchrun

    def __init__(self, channels: int, dim: int, hidden: int | None, cfg: PatchTermConfig, teacher: TeacherConfig,
                 num_classes: int, weight: float, start: int = 0) -> None:
        super().__init__(weight, start)
        self.head = ProjectionHead(channels, dim, hidden)
        self.head_ema = EMATeacher(self.head, teacher.alpha, "eval", teacher.buffers)  # the teacher's view: running statistics
        self.cfg, self.num_classes = cfg, num_classes
        self.sampler = PatchSampler(cfg.max_anchors, cfg.num_negatives, cfg.negatives)
        self.loss = PatchContrastLoss(cfg.temperature)
        self.__dict__["project"] = self.head

    def applies(self, ctx: StepContext) -> bool:
        return ctx.target is not None and ctx.out_teacher is not None and super().applies(ctx)

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:
        return self.contrast(self.views(ctx), ctx.generator)

    def views(self, ctx: StepContext) -> PatchViews:
        """The network passes and geometry: crops, their features, aligned cell ids and labels."""
        assert ctx.target is not None and ctx.out_teacher is not None and ctx.pseudo_label is not None
        pc, stride, gen, img = self.cfg, ctx.stride, ctx.generator, ctx.target["image"]
        B, _, H, W = img.shape
        ch = max(stride, int(H * pc.crop[0]) // stride * stride)
        cw = max(stride, int(W * pc.crop[1]) // stride * stride)
        pl_cells = pool_labels(ctx.pseudo_label, stride, self.num_classes)  # (B, h, w) teacher labels
        gh, gw = pl_cells.shape[1:]
        if pc.views == "student_teacher":
            boxes = sample_boxes(B, H, W, ch, cw, stride, gen)
            crops = torch.stack([img[b, :, bx.y:bx.y + bx.h, bx.x:bx.x + bx.w] for b, bx in enumerate(boxes)])
            m1 = cells(ctx.student(ctx.augment(crops), features_only=True).features)
            lab1 = torch.cat([pl_cells[b, bx.cells(stride)[0], bx.cells(stride)[1]].reshape(-1)
                              for b, bx in enumerate(boxes)])
            ids1 = torch.cat([block_ids(b, *bx.cells(stride), gh, gw) for b, bx in enumerate(boxes)])
            # every crop cell lies in the overlap and sits at its global cell in the teacher's map
            return PatchViews(m1, cells(ctx.out_teacher.features), torch.arange(m1.shape[0]), ids1.clone(), lab1,
                              pl_cells.reshape(-1), ids1, torch.arange(pl_cells.numel()), True)
        pairs = [sample_view_pair(H, W, ch, cw, stride, (pc.iou[0], pc.iou[1]), gen) for _ in range(B)]
        c1 = torch.stack([img[b, :, a.y:a.y + a.h, a.x:a.x + a.w] for b, (a, _) in enumerate(pairs)])
        c2 = torch.stack([img[b, :, v.y:v.y + v.h, v.x:v.x + v.w] for b, (_, v) in enumerate(pairs)])
        f = ctx.student(torch.cat([ctx.augment(c1), ctx.augment(c2)]), features_only=True).features
        h1, w1 = f.shape[-2:]
        kk1, kk2, l1, l2, i1, i2 = [], [], [], [], [], []
        for b, (a, v) in enumerate(pairs):
            sa, sb = overlap_cells(a, v, stride)
            kk1.append(block_ids(b, *sa, h1, w1))
            kk2.append(block_ids(b, *sb, h1, w1))
            for box, ls, ids in ((a, l1, i1), (v, l2, i2)):
                ys, xs = box.cells(stride)
                ls.append(pl_cells[b, ys, xs].reshape(-1))
                ids.append(block_ids(b, ys, xs, gh, gw))
        return PatchViews(cells(f[:B]), cells(f[B:]), torch.cat(kk1), torch.cat(kk2), torch.cat(l1), torch.cat(l2),
                          torch.cat(i1), torch.cat(i2), False)

    def contrast(self, v: PatchViews, generator: torch.Generator) -> tuple[Tensor, Logs]:
        """Sampling, projection and the loss (no segmentor pass)."""
        dev = v.m1.device
        s = self.sampler(v.k1, v.k2, v.lab1, v.lab2, v.ids1, v.ids2, generator)
        # project only the rows that take part: anchors/positives and the negatives of each view
        e1 = self.project(torch.cat([v.m1[s.k1], v.m1[s.q1]]))
        rows2 = torch.cat([v.m2[s.k2], v.m2[s.q2]])
        if v.teacher2:
            with torch.no_grad():
                e2 = self.head_ema(rows2)
        else:
            e2 = self.project(rows2)
        A = s.k1.numel()
        loss = self.loss(e1[:A], e2[:A], torch.cat([e1[A:], e2[A:]]), s.valid)
        logs: Logs = {"loss/patch": loss.detach(), "sampler/patch/anchors": float(A),
                      "sampler/patch/negatives": s.valid.sum(1).float().mean() if s.valid.numel() else 0.0}
        return loss, logs

    def trainable_modules(self) -> list[nn.Module]:
        return [self.head]

    def wrap(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.__dict__["project"] = wrap(self.head)

    def idle_loss(self, ctx: StepContext) -> Tensor | None:
        return zero_use(self.project, ctx)

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        self.head_ema.update(self.head, iteration)
