"""``temporal_contrast`` (L_temp, video): student cells of frame τ (the target part of the mixed
image) against teacher cells of frame τ-k, class-level across frames, with the flow-matched cell of
τ-k as an extra positive where it is in bounds and the pseudo-labels agree."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import PixelTermConfig, TemporalTermConfig
from ...contrast import TemporalContrastLoss, VideoSampler, flow_to_cells, pool_labels, warp_backward
from ...core.constants import IGNORE_INDEX
from ...core.tensors import class_argmax
from ..context import StepContext, rows_at
from .base import Logs, Term, zero_use
from .embedding import PixelEmbedding


@dataclass
class TemporalInputs:
    """Frame τ-k seen by the teacher and brought to frame τ's (h, w) cells: ``prev_features``
    (B, C, h, w); ``prev_lab`` (B, h, w) its confident pseudo-labels; ``cur_lab`` (B, h, w) labels of
    frame τ's target cells; ``cur_pred`` / ``warped_pred`` (B, h, w) argmax at τ and warped from
    τ-k; ``warped_lab`` (B, h, w); ``inb`` (B, h, w) bool in bounds (and flow valid);
    ``flow_cells`` (B, 2, h, w) flow in cells, or None without flow."""

    prev_features: Tensor
    prev_lab: Tensor
    cur_lab: Tensor
    cur_pred: Tensor
    warped_pred: Tensor
    warped_lab: Tensor
    inb: Tensor
    flow_cells: Tensor | None


class TemporalContrastTerm(Term):
    """The teacher on frame τ-k (in the recipe's teacher batch). Uses the shared pixel embedding and memory. Needs target
    clips (``prev_image``); on image batches it is off."""

    name = "temporal_contrast"
    teacher_frames = ("prev_image",)  # the recipe's teacher pass covers frame τ-k too (one batch)
    embedding: PixelEmbedding  # shared with pixel_contrast; registered once, at the method

    def __init__(self, embedding: PixelEmbedding, cfg: TemporalTermConfig, pixel: PixelTermConfig, num_classes: int,
                 weight: float, start: int = 0) -> None:
        super().__init__(weight, start)
        self.__dict__["embedding"] = embedding  # a plain reference: nn.Module would register it twice
        self.cfg, self.threshold, self.num_classes = cfg, pixel.target_threshold, num_classes
        self.sampler = VideoSampler(num_classes, cfg.max_anchors, cfg.max_per_class, pixel.min_pixels, cfg.hard_ratio,
                                    cfg.max_contrast, cfg.memory_per_class)
        self.loss = TemporalContrastLoss(cfg.temperature)

    def applies(self, ctx: StepContext) -> bool:
        return ctx.target is not None and "prev_image" in ctx.target and ctx.out_mixed is not None \
            and super().applies(ctx)

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:
        return self.contrast(self.inputs(ctx), ctx)

    @torch.no_grad()
    def inputs(self, ctx: StepContext) -> TemporalInputs:
        """The teacher pass on frame τ-k, its labels, and everything warped to frame τ's cells."""
        assert ctx.target is not None and ctx.teacher is not None and ctx.out_mixed is not None
        assert ctx.mix_mask is not None
        tgt, s, K = ctx.target, ctx.stride, self.num_classes
        out_p = ctx.teacher_frames.get("prev_image")
        if out_p is None:  # a recipe without the joint pass
            out_p = ctx.teacher(tgt["prev_image"])
        conf_p, pl_p = out_p.logits.float().softmax(1).max(1)
        pl_p = pl_p.masked_fill(conf_p <= self.threshold, IGNORE_INDEX)
        prev_lab = pool_labels(pl_p, s, K)
        # temporal instability: the teacher's prediction on the clean frame τ against its prediction
        # on frame τ-k (flow-warped below): the same network on two clean frames
        assert ctx.out_teacher is not None
        B = out_p.logits.shape[0]
        preds = class_argmax(torch.cat([F.avg_pool2d(o.logits.float(), s, s, ceil_mode=True)
                                        for o in (out_p, ctx.out_teacher)]))
        prev_pred, cur_pred = preds[:B], preds[B:]
        # anchors: target cells of the mixed image (frame τ), labelled by confident pseudo-labels;
        # a target cell is one where target pixels are the strict majority (pool_labels' rule)
        target_cell = F.avg_pool2d((~ctx.mix_mask).float().unsqueeze(1), s, s, ceil_mode=True).squeeze(1) > 0.5
        cur_lab = ctx.mixed_cells(self.threshold)
        cur_lab = torch.where(target_cell, cur_lab, torch.full_like(cur_lab, IGNORE_INDEX))
        if "flow" not in tgt:  # co-located cells
            inb = torch.ones_like(prev_pred, dtype=torch.bool)
            return TemporalInputs(out_p.features, prev_lab, cur_lab, cur_pred, prev_pred, prev_lab, inb, None)
        fvalid_px = tgt.get("flow_valid", torch.ones_like(tgt["flow"][:, 0], dtype=torch.bool))
        fcells, fvalid = flow_to_cells(tgt["flow"], fvalid_px, s)
        warped, inb = warp_backward(torch.stack([prev_pred, prev_lab], 1).float(), fcells, mode="nearest")
        return TemporalInputs(out_p.features, prev_lab, cur_lab, cur_pred, warped[:, 0].long(), warped[:, 1].long(),
                              inb & fvalid, fcells)

    def contrast(self, inp: TemporalInputs, ctx: StepContext) -> tuple[Tensor, Logs]:
        """Sampling, projection, memory rows and the loss (no segmentor pass)."""
        assert ctx.out_mixed is not None
        emb, gen, logs = self.embedding, ctx.generator, {}
        lab = inp.cur_lab.reshape(-1)
        sample = self.sampler(lab, inp.cur_pred.reshape(-1), inp.warped_pred.reshape(-1), inp.inb.reshape(-1), gen)
        anchors, a_lab = emb.project(rows_at(ctx.out_mixed.features, sample.index)), lab[sample.index]
        with torch.no_grad():
            c_idx = self.sampler.contrast(inp.prev_lab.reshape(-1), gen)
            contrast = emb.head_ema(rows_at(inp.prev_features, c_idx))
            c_lab = inp.prev_lab.reshape(-1)[c_idx]
            if emb.memory is not None and self.cfg.memory_per_class > 0:
                mf, ml = emb.memory.get(self.cfg.memory_per_class, gen)
                contrast, c_lab = torch.cat([contrast, mf.to(contrast.dtype)]), torch.cat([c_lab, ml])
            matched = matched_valid = None
            if self.cfg.use_flow and inp.flow_cells is not None:
                warped_f, _ = warp_backward(inp.prev_features.float(), inp.flow_cells, mode="bilinear")
                matched = emb.head_ema(rows_at(warped_f, sample.index))
                ok = (inp.inb & (inp.warped_lab == inp.cur_lab) & (inp.cur_lab != IGNORE_INDEX)).reshape(-1)
                matched_valid = ok[sample.index]
                if matched_valid.numel():
                    logs["sampler/temporal/flow_matched"] = matched_valid.float().mean()
        loss = self.loss(anchors, a_lab, contrast, c_lab, matched, matched_valid)
        logs.update(sample.logs("sampler/temporal", ctx.model.class_names))
        logs["loss/temporal"] = loss.detach()
        return loss, logs

    def idle_loss(self, ctx: StepContext) -> Tensor | None:
        return zero_use(self.embedding.project, ctx)
