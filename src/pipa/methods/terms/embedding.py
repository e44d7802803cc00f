"""The pixel embedding shared by ``pixel_contrast`` and ``temporal_contrast``: the projection head
``h_pix`` (student), its EMA copy (teacher side) and the semantic-aware memory of embeddings by
that EMA head (target cells: the teacher's features; source cells: per ``memory.source``). Registered once at the method (``shared.pixel_embedding``); training only."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ...config import MemoryConfig, TeacherConfig
from ...contrast import ProjectionHead, SemanticMemory, class_balanced, pool_labels
from ...core.constants import IGNORE_INDEX
from ...uda.teacher import EMATeacher
from ..context import StepContext, cells
from .base import Logs, SharedModule


class PixelEmbedding(SharedModule):
    """``head`` (C -> D, unit rows), ``head_ema`` (its EMA, updated like the teacher) and, if
    ``memory.size_per_class > 0``, ``memory`` (K FIFO queues of D-dim embeddings by ``head_ema``)."""

    project: Callable[[Tensor], Tensor]  # ``head``'s forward, DDP-wrapped under torchrun: (N, C) -> (N, D)

    def __init__(self, channels: int, dim: int, hidden: int | None, num_classes: int, teacher: TeacherConfig,
                 memory: MemoryConfig, target_threshold: float) -> None:
        super().__init__()
        self.head = ProjectionHead(channels, dim, hidden)
        # the teacher-side head embeds a row the same way whatever batch it comes in: running statistics
        self.head_ema = EMATeacher(self.head, teacher.alpha, "eval", teacher.buffers)
        self.memory = SemanticMemory(num_classes, memory.size_per_class, dim) if memory.size_per_class > 0 else None
        self.mc, self.target_threshold, self.num_classes, self.dim = memory, target_threshold, num_classes, dim
        self.__dict__["project"] = self.head  # the student-side forward; DDP-wrapped under torchrun

    def wrap(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.__dict__["project"] = wrap(self.head)

    def memory_rows(self, per_class: int | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(M, D) memory entries and (M,) labels: ``per_class`` random ones of each class (None: all)."""
        if self.memory is None:
            dev = self.head.fc2.weight.device
            return torch.zeros(0, self.dim, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
        return self.memory.get(per_class, generator)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.head]

    @torch.no_grad()
    def after_terms(self, ctx: StepContext) -> Logs:
        """Push ``head_ema`` embeddings of confidently labelled cells, class-balanced: the teacher's
        features of target cells whose teacher confidence passes the threshold, and source cells
        with their ground truth (the student's detached features with ``memory.source=student``,
        the teacher's with ``teacher``, none with ``off``). Runs after the terms, so this batch is never its own negative."""
        if self.memory is None or ctx.out_teacher is None:
            return {}
        assert ctx.pseudo_label is not None and ctx.confidence is not None and ctx.teacher is not None
        t_lbl = ctx.pseudo_label.clone()
        t_lbl = t_lbl.masked_fill(ctx.confidence <= self.target_threshold, IGNORE_INDEX)
        feats = [cells(ctx.out_teacher.features)]
        labels = [pool_labels(t_lbl, ctx.stride, self.num_classes).reshape(-1)]
        if self.mc.source == "teacher":  # the spec: one more teacher pass, over the source images
            feats.append(cells(ctx.teacher(ctx.source["image"]).features))
        elif self.mc.source == "student":  # the student's own source features, detached (no extra pass)
            feats.append(cells(ctx.out_source.features.detach()))
        if self.mc.source != "off":
            labels.append(ctx.source_cells().reshape(-1))
        f, lab = torch.cat(feats), torch.cat(labels)
        none = torch.zeros_like(lab, dtype=torch.bool)
        per = self.mc.push_per_class
        pick = class_balanced(lab, none, self.num_classes, per * self.num_classes, per, 1, 0.0, ctx.generator).index
        if pick.numel():
            self.memory.push(self.head_ema(f[pick]), lab[pick])
        fill = self.memory.fill().float() / self.memory.size_per_class
        logs: Logs = {"memory/fill": fill.mean()}
        for c, name in enumerate(ctx.model.class_names):
            logs[f"memory/fill_{name}"] = fill[c]
        return logs

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        self.head_ema.update(self.head, iteration)
