"""PiPa++: a base self-training recipe (``self_training`` | ``daformer`` | ``mic``) plus the
self-supervised terms of ``pipa.contrast``, used in training only:

  L = L_base + λ_pix L_pix + λ_patch L_patch [+ λ_temp L_temp]      (method spec, "Total objective")

- L_pix: anchors chosen by the image sampler among the student's source and mixed-image cells
  (source labels; target cells labelled by confident teacher pseudo-labels), contrasted with each
  other and with the semantic memory (teacher embeddings of past batches).
- L_patch: a stride-aligned crop of the target image through the student vs. the teacher's map of
  the whole image cut to the crop (``student_teacher``, default), or two overlapping crops through
  the student (``student_student``).
- L_temp (``pipa_video``, or ``pipa`` on clip data): student cells of frame τ (the target part of
  the mixed image) against teacher cells of frame τ-1, with the flow-matched cell as a positive.

The projection heads (and their EMA copies) are training-only modules: ``export_model`` returns
the bare segmentor, so the deployed model has exactly the base recipe's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..contrast import (ImageSampler, PatchContrastLoss, PixelContrastLoss, ProjectionHead, SemanticMemory,
                        TemporalContrastLoss, VideoSampler, class_balanced, flow_to_cells, pool_labels,
                        sample_view_pair, warp_backward)
from ..contrast.samplers import pair_counts
from ..contrast.views import overlap_cells
from ..evaluation.metrics import IGNORE_INDEX
from ..models import Segmentor
from ..uda.teacher import EMATeacher
from .base import Batch
from .self_training import MIC, DAFormer, SelfTraining

BASES: dict[str, type[SelfTraining]] = {"self_training": SelfTraining, "daformer": DAFormer, "mic": MIC}


@dataclass
class PatchViews:
    """Cells of the two views of L_patch: ``m1``/``m2`` (N1, C)/(N2, C) feature rows; ``k1[i]``
    and ``k2[i]`` index the same image cell in each (the positive pairs); ``lab``/``ids`` give each
    row's teacher pseudo-label and global cell id; ``teacher2``: view 2 is the teacher's map."""

    m1: Tensor
    m2: Tensor
    k1: Tensor
    k2: Tensor
    lab1: Tensor
    lab2: Tensor
    ids1: Tensor
    ids2: Tensor
    teacher2: bool


def _cells(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B·h·w, C)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class PiPaTerms:
    """Mixin that adds the PiPa++ terms to a :class:`SelfTraining` recipe (see module docstring)."""

    requires_clips: ClassVar[bool] = False

    def _init_terms(self, cfg: Config, model: Segmentor) -> None:
        p, t = cfg.method.pipa, cfg.method.teacher
        K, C = model.num_classes, model.cfg.decoder_channels
        hidden = p.hidden_dim or None
        self.num_classes = K
        self.use_pixel = p.pixel.weight > 0
        self.use_patch = p.patch.weight > 0
        self.use_temporal = p.temporal.weight > 0
        need_pix_head = self.use_pixel or self.use_temporal
        self.pix_head = ProjectionHead(C, p.embed_dim, hidden) if need_pix_head else None
        self.patch_head = ProjectionHead(C, p.embed_dim, hidden) if self.use_patch else None
        # the teacher carries EMA copies of the projection heads (its memory entries and views)
        self.pix_head_ema = EMATeacher(self.pix_head, t.alpha, t.mode, t.buffers) if self.pix_head else None
        self.patch_head_ema = EMATeacher(self.patch_head, t.alpha, t.mode, t.buffers) if self.patch_head else None
        self.memory = (SemanticMemory(K, p.memory.size_per_class, p.embed_dim)
                       if p.memory.size_per_class > 0 and need_pix_head else None)
        px, tp = p.pixel, p.temporal
        self.image_sampler = ImageSampler(K, px.max_anchors, px.max_per_class, px.min_pixels, px.hard_ratio,
                                          px.hard_confidence, px.memory_per_class or None)
        self.video_sampler = VideoSampler(K, tp.max_anchors, tp.max_per_class, px.min_pixels, tp.hard_ratio,
                                          tp.max_contrast, tp.memory_per_class)
        self.pixel_loss = PixelContrastLoss(px.temperature)
        self.patch_loss = PatchContrastLoss(p.patch.temperature)
        self.temporal_loss = TemporalContrastLoss(tp.temperature)
        self._ddp = False
        self.__dict__["pix_head_fwd"] = self.pix_head
        self.__dict__["patch_head_fwd"] = self.patch_head

    # -- plumbing -------------------------------------------------------------------------------
    def wrap_student(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        super().wrap_student(wrap)  # type: ignore[misc]
        self._ddp = True
        if self.pix_head is not None:
            self.__dict__["pix_head_fwd"] = wrap(self.pix_head)
        if self.patch_head is not None:
            self.__dict__["patch_head_fwd"] = wrap(self.patch_head)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model] + [h for h in (self.pix_head, self.patch_head) if h is not None]  # type: ignore[attr-defined]

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        super().after_step(iteration)  # type: ignore[misc]
        for head, ema in ((self.pix_head, self.pix_head_ema), (self.patch_head, self.patch_head_ema)):
            if head is not None and ema is not None:
                ema.update(head, iteration)

    def _on(self, weight: float, start: int, iteration: int) -> bool:
        return weight > 0 and iteration >= start

    # -- the step -------------------------------------------------------------------------------
    def step(self, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        if self.requires_clips and "prev_image" not in batch["target"]:
            raise ValueError("pipa_video needs target clips (a video dataset, e.g. data.target.clip_length=4)")
        loss, logs = super().step(batch, iteration)  # type: ignore[misc]
        ctx = self.context  # type: ignore[attr-defined]
        p = self.cfg.method.pipa  # type: ignore[attr-defined]
        src, tgt = batch["source"], batch["target"]
        stride = src["image"].shape[-1] // ctx["out_s"].features.shape[-1]
        gen: torch.Generator = ctx["generator"]
        extra = loss.new_zeros(())
        unused = loss.new_zeros(())  # under DDP every head must take part in every step
        if self.pix_head is not None:
            if self._on(p.pixel.weight, p.pixel.start, iteration):
                extra = extra + p.pixel.weight * self._pixel_term(src, ctx, stride, gen, logs)
            elif self._ddp:
                unused = unused + self.pix_head_fwd(_cells(ctx["out_m"].features)[:2]).sum() * 0
        if self.patch_head is not None:
            if self._on(p.patch.weight, p.patch.start, iteration):
                extra = extra + p.patch.weight * self._patch_term(tgt, ctx, stride, gen, logs)
            elif self._ddp:
                unused = unused + self.patch_head_fwd(_cells(ctx["out_m"].features)[:2]).sum() * 0
        if self.use_temporal and "prev_image" in tgt and self._on(p.temporal.weight, p.temporal.start, iteration):
            extra = extra + p.temporal.weight * self._temporal_term(tgt, ctx, stride, gen, logs)
        if self.memory is not None:
            self._push_memory(src, ctx, stride, gen)
            fill = self.memory.fill().float() / self.memory.size_per_class
            logs["memory/fill"] = float(fill.mean())
            for c, name in enumerate(self.model.class_names):  # type: ignore[attr-defined]
                logs[f"memory/fill_{name}"] = float(fill[c])
        return loss + extra + unused, logs

    def _target_cell_labels(self, ctx: dict[str, Any], threshold: float, stride: int) -> Tensor:
        """Mixed-image cell labels: source ground truth where pasted, confident pseudo-labels elsewhere
        (computed once per step and kept in ``ctx``)."""
        if "mix_cells" not in ctx:
            lbl = ctx["mix_label"].clone()
            unsure = ~ctx["mix_mask"] & (ctx["confidence"] <= threshold)
            lbl[unsure] = IGNORE_INDEX
            ctx["mix_cells"] = pool_labels(lbl, stride, self.num_classes)
        return ctx["mix_cells"]

    def _source_cell_labels(self, src: dict[str, Tensor], ctx: dict[str, Any], stride: int) -> Tensor:
        """Source ground truth pooled to feature cells (once per step, kept in ``ctx``)."""
        if "src_cells" not in ctx:
            ctx["src_cells"] = pool_labels(src["label"], stride, self.num_classes)
        return ctx["src_cells"]

    def _pixel_term(self, src: dict[str, Tensor], ctx: dict[str, Any], stride: int, gen: torch.Generator,
                    logs: dict[str, float]) -> Tensor:
        px = self.cfg.method.pipa.pixel  # type: ignore[attr-defined]
        out_s, out_m = ctx["out_s"], ctx["out_m"]
        labels = torch.cat([self._source_cell_labels(src, ctx, stride),
                            self._target_cell_labels(ctx, px.target_threshold, stride)]).reshape(-1)
        with torch.no_grad():
            logits = torch.cat([out_s.logits, out_m.logits]).detach().float()
            probs = _cells(F.avg_pool2d(logits, stride, stride).softmax(1))
        sample = self.image_sampler(labels, probs, gen)
        feats = torch.cat([_cells(out_s.features), _cells(out_m.features)])
        anchors, a_lab = self.pix_head_fwd(feats[sample.index]), labels[sample.index]
        mem_f, mem_l = self._memory_rows(self.image_sampler.memory_per_class, gen)
        loss = self.pixel_loss(anchors, a_lab, mem_f, mem_l)
        logs.update(sample.logs("sampler/pixel", self.model.class_names))  # type: ignore[attr-defined]
        pos, neg = pair_counts(a_lab, torch.cat([a_lab, mem_l]), self.num_classes)
        present = torch.bincount(a_lab, minlength=self.num_classes)[: self.num_classes] > 0
        if bool(present.any()):
            logs["sampler/pixel/positives"] = float(pos[present].mean())
            logs["sampler/pixel/negatives"] = float(neg[present].mean())
        logs["loss/pixel"] = float(loss.detach())
        return loss

    def _memory_rows(self, per_class: int | None, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.memory is None:
            dev = self.model.classifier.weight.device  # type: ignore[attr-defined]
            dim = self.cfg.method.pipa.embed_dim  # type: ignore[attr-defined]
            return torch.zeros(0, dim, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
        return self.memory.get(per_class, gen)

    @torch.no_grad()
    def _push_memory(self, src: dict[str, Tensor], ctx: dict[str, Any], stride: int, gen: torch.Generator) -> None:
        """Teacher embeddings of confidently labelled cells, class-balanced: target cells whose
        teacher confidence passes the threshold, and source cells with their ground truth."""
        mc, px = self.cfg.method.pipa.memory, self.cfg.method.pipa.pixel  # type: ignore[attr-defined]
        assert self.memory is not None and self.pix_head_ema is not None
        t_lbl = ctx["pseudo_label"].clone()
        t_lbl[ctx["confidence"] <= px.target_threshold] = IGNORE_INDEX
        feats = [_cells(ctx["out_t"].features)]
        labels = [pool_labels(t_lbl, stride, self.num_classes).reshape(-1)]
        if mc.source == "teacher":
            feats.append(_cells(self.teacher(src["image"]).features))  # type: ignore[attr-defined]
        elif mc.source == "student":  # the student's own source features, detached (no extra pass)
            feats.append(_cells(ctx["out_s"].features.detach()))
        if mc.source != "off":
            labels.append(self._source_cell_labels(src, ctx, stride).reshape(-1))
        f, lab = torch.cat(feats), torch.cat(labels)
        none = torch.zeros_like(lab, dtype=torch.bool)
        pick = class_balanced(lab, none, self.num_classes, mc.push_per_class * self.num_classes, mc.push_per_class,
                              1, 0.0, gen).index
        if pick.numel():
            self.memory.push(self.pix_head_ema(f[pick]), lab[pick])

    def _patch_term(self, tgt: dict[str, Tensor], ctx: dict[str, Any], stride: int, gen: torch.Generator,
                    logs: dict[str, float]) -> Tensor:
        return self._patch_contrast(self._patch_views(tgt, ctx, stride, gen), gen, logs)

    def _patch_views(self, tgt: dict[str, Tensor], ctx: dict[str, Any], stride: int, gen: torch.Generator) -> PatchViews:
        """The network passes and geometry of L_patch: crops, their features, aligned cell ids."""
        pc = self.cfg.method.pipa.patch  # type: ignore[attr-defined]
        img = tgt["image"]
        B, _, H, W = img.shape
        ch = max(stride, int(H * pc.crop[0]) // stride * stride)
        cw = max(stride, int(W * pc.crop[1]) // stride * stride)
        pl_cells = pool_labels(ctx["pseudo_label"], stride, self.num_classes)  # (B, h, w) teacher labels
        if pc.views == "student_teacher":
            # view 1: a crop through the student; view 2: the teacher's map of the whole image
            boxes = [sample_view_pair(H, W, ch, cw, stride, (1.0, 1.0), gen)[0] for _ in range(B)]
            crops = torch.stack([img[b, :, bx.y:bx.y + bx.h, bx.x:bx.x + bx.w] for b, bx in enumerate(boxes)])
            f1 = self.student(self.augment(crops, gen), features_only=True).features  # type: ignore[attr-defined]
            f2 = ctx["out_t"].features
            m1 = _cells(f1)
            m2 = _cells(f2)
            lab1 = torch.cat([pl_cells[b, bx.cells(stride)[0], bx.cells(stride)[1]].reshape(-1) for b, bx in enumerate(boxes)])
            ids1 = torch.cat([self._block_ids(b, *bx.cells(stride), *pl_cells.shape[1:]) for b, bx in enumerate(boxes)])
            lab2, ids2 = pl_cells.reshape(-1), torch.arange(pl_cells.numel())
            k1 = torch.arange(m1.shape[0])  # every crop cell lies in the overlap
            k2 = ids1.clone()  # ... and sits at its global cell in the teacher's map
            teacher2 = True
        else:
            pairs = [sample_view_pair(H, W, ch, cw, stride, (pc.iou[0], pc.iou[1]), gen) for _ in range(B)]
            c1 = torch.stack([img[b, :, a.y:a.y + a.h, a.x:a.x + a.w] for b, (a, _) in enumerate(pairs)])
            c2 = torch.stack([img[b, :, v.y:v.y + v.h, v.x:v.x + v.w] for b, (_, v) in enumerate(pairs)])
            f = self.student(torch.cat([self.augment(c1, gen), self.augment(c2, gen)]), features_only=True).features  # type: ignore[attr-defined]
            m1, m2 = _cells(f[:B]), _cells(f[B:])
            h1, w1 = f.shape[-2:]
            kk1, kk2, l1, l2, i1, i2 = [], [], [], [], [], []
            for b, (a, v) in enumerate(pairs):
                sa, sb = overlap_cells(a, v, stride)
                kk1.append(self._block_ids(b, *sa, h1, w1))
                kk2.append(self._block_ids(b, *sb, h1, w1))
                for box, ls, ids in ((a, l1, i1), (v, l2, i2)):
                    ys, xs = box.cells(stride)
                    ls.append(pl_cells[b, ys, xs].reshape(-1))
                    ids.append(self._block_ids(b, ys, xs, *pl_cells.shape[1:]))
            k1, k2 = torch.cat(kk1), torch.cat(kk2)
            lab1, lab2, ids1, ids2 = torch.cat(l1), torch.cat(l2), torch.cat(i1), torch.cat(i2)
            teacher2 = False
        return PatchViews(m1, m2, k1, k2, lab1, lab2, ids1, ids2, teacher2)

    def _patch_contrast(self, v: PatchViews, gen: torch.Generator, logs: dict[str, float]) -> Tensor:
        """Sampling, projection and the loss of L_patch (no network pass of the segmentor)."""
        pc = self.cfg.method.pipa.patch  # type: ignore[attr-defined]
        m1, m2, k1, k2, lab1, lab2, ids1, ids2, teacher2 = (v.m1, v.m2, v.k1, v.k2, v.lab1, v.lab2, v.ids1, v.ids2,
                                                            v.teacher2)
        dev = m1.device
        if k1.numel() > pc.max_anchors:
            keep = torch.randperm(k1.numel(), generator=gen)[: pc.max_anchors]
            k1, k2 = k1[keep], k2[keep]
        n1 = min(pc.num_negatives // 2, m1.shape[0])
        n2 = min(pc.num_negatives - n1, m2.shape[0])
        q1 = torch.randperm(m1.shape[0], generator=gen)[:n1]
        q2 = torch.randperm(m2.shape[0], generator=gen)[:n2]
        # project only the rows that take part: anchors/positives and the negatives of each view
        e1 = self.patch_head_fwd(torch.cat([m1[k1.to(dev)], m1[q1.to(dev)]]))
        rows2 = torch.cat([m2[k2.to(dev)], m2[q2.to(dev)]])
        if teacher2:
            with torch.no_grad():
                e2 = self.patch_head_ema(rows2)
        else:
            e2 = self.patch_head_fwd(rows2)
        K = k1.numel()
        v1, v2 = e1[:K], e2[:K]
        negatives = torch.cat([e1[K:], e2[K:]])
        a_lab, a_ids = lab1[k1.to(lab1.device)], ids1[k1]
        n_lab = torch.cat([lab1[q1.to(lab1.device)], lab2[q2.to(lab2.device)]])
        n_ids = torch.cat([ids1[q1], ids2[q2]])
        if pc.negatives == "semantic":
            valid = a_lab[:, None] != n_lab[None, :]
        else:
            valid = (a_ids[:, None] != n_ids[None, :]).to(dev)
        loss = self.patch_loss(v1, v2, negatives, valid.to(dev))
        logs["loss/patch"] = float(loss.detach())
        logs["sampler/patch/anchors"] = float(K)
        logs["sampler/patch/negatives"] = float(valid.sum(1).float().mean()) if valid.numel() else 0.0
        return loss

    @staticmethod
    def _block_ids(b: int, ys: slice, xs: slice, h: int, w: int) -> Tensor:
        """Flat indices (b·h·w + y·w + x) of a block of cells of a (B, h, w) grid."""
        yy, xx = torch.meshgrid(torch.arange(ys.start, ys.stop), torch.arange(xs.start, xs.stop), indexing="ij")
        return (b * h * w + yy * w + xx).reshape(-1)

    def _temporal_term(self, tgt: dict[str, Tensor], ctx: dict[str, Any], stride: int, gen: torch.Generator,
                       logs: dict[str, float]) -> Tensor:
        return self._temporal_contrast(self._temporal_inputs(tgt, ctx, stride), ctx, gen, logs)

    @torch.no_grad()
    def _temporal_inputs(self, tgt: dict[str, Tensor], ctx: dict[str, Any], stride: int) -> dict[str, Any]:
        """The teacher pass on frame τ-k, its labels, and everything warped to frame τ's cells."""
        px = self.cfg.method.pipa.pixel  # type: ignore[attr-defined]
        fcells = None
        out_p = self.teacher(tgt["prev_image"])  # type: ignore[attr-defined]
        conf_p, pl_p = out_p.logits.float().softmax(1).max(1)
        pl_p[conf_p <= px.target_threshold] = IGNORE_INDEX
        prev_lab = pool_labels(pl_p, stride, self.num_classes)  # (B, h, w)
        prev_pred = F.avg_pool2d(out_p.logits.float(), stride, stride).argmax(1)
        cur_pred = F.avg_pool2d(ctx["out_m"].logits.detach().float(), stride, stride).argmax(1)
        # anchors: target cells of the mixed image (frame τ), labelled by confident pseudo-labels
        cur_lab = self._target_cell_labels(ctx, px.target_threshold, stride)
        target_cell = pool_labels((~ctx["mix_mask"]).long(), stride, 2) == 1
        cur_lab = torch.where(target_cell, cur_lab, torch.full_like(cur_lab, IGNORE_INDEX))
        has_flow = "flow" in tgt
        if has_flow:
            fvalid_px = tgt.get("flow_valid", torch.ones_like(tgt["flow"][:, 0], dtype=torch.bool))
            fcells, fvalid = flow_to_cells(tgt["flow"], fvalid_px, stride)
            warped, inb = warp_backward(torch.stack([prev_pred, prev_lab], 1).float(), fcells, mode="nearest")
            warped_pred, warped_lab = warped[:, 0].long(), warped[:, 1].long()
            inb = inb & fvalid
        else:  # co-located cells
            warped_pred, warped_lab, inb = prev_pred, prev_lab, torch.ones_like(prev_pred, dtype=torch.bool)
        return {"prev_features": out_p.features, "prev_lab": prev_lab, "cur_lab": cur_lab, "cur_pred": cur_pred,
                "warped_pred": warped_pred, "warped_lab": warped_lab, "inb": inb, "flow_cells": fcells,
                "has_flow": has_flow}

    def _temporal_contrast(self, inp: dict[str, Any], ctx: dict[str, Any], gen: torch.Generator,
                           logs: dict[str, float]) -> Tensor:
        """Sampling, projection, memory rows and the loss of L_temp (no segmentor pass)."""
        tp = self.cfg.method.pipa.temporal  # type: ignore[attr-defined]
        assert self.pix_head_ema is not None
        prev_lab, cur_lab, cur_pred, inb = inp["prev_lab"], inp["cur_lab"], inp["cur_pred"], inp["inb"]
        warped_pred, warped_lab, fcells, has_flow = inp["warped_pred"], inp["warped_lab"], inp["flow_cells"], inp["has_flow"]
        prev_features = inp["prev_features"]
        lab = cur_lab.reshape(-1)
        sample = self.video_sampler(lab, cur_pred.reshape(-1), warped_pred.reshape(-1), inb.reshape(-1), gen)
        anchors, a_lab = self.pix_head_fwd(_cells(ctx["out_m"].features)[sample.index]), lab[sample.index]
        with torch.no_grad():
            c_idx = self.video_sampler.contrast(prev_lab.reshape(-1), gen)
            contrast, c_lab = self.pix_head_ema(_cells(prev_features)[c_idx]), prev_lab.reshape(-1)[c_idx]
            if self.memory is not None and tp.memory_per_class > 0:
                mf, ml = self.memory.get(tp.memory_per_class, gen)
                contrast, c_lab = torch.cat([contrast, mf.to(contrast.dtype)]), torch.cat([c_lab, ml])
            matched = matched_valid = None
            if tp.use_flow and has_flow:
                warped_f, _ = warp_backward(prev_features.float(), fcells, mode="bilinear")
                matched = self.pix_head_ema(_cells(warped_f)[sample.index])
                ok = (inb & (warped_lab == cur_lab) & (cur_lab != IGNORE_INDEX)).reshape(-1)
                matched_valid = ok[sample.index]
                if matched_valid.numel():
                    logs["sampler/temporal/flow_matched"] = float(matched_valid.float().mean())
        loss = self.temporal_loss(anchors, a_lab, contrast, c_lab, matched, matched_valid)
        logs.update(sample.logs("sampler/temporal", self.model.class_names))  # type: ignore[attr-defined]
        logs["loss/temporal"] = float(loss.detach())
        return loss


def _make(base: type[SelfTraining], clips: bool) -> type[SelfTraining]:
    name = f"PiPa{'Video' if clips else ''}_{base.__name__}"

    def __init__(self: Any, cfg: Config, model: Segmentor) -> None:
        base.__init__(self, cfg, model)
        self._init_terms(cfg, model)

    return type(name, (PiPaTerms, base), {"__init__": __init__, "requires_clips": clips})


_CLASSES = {(b, clips): _make(cls, clips) for b, cls in BASES.items() for clips in (False, True)}


def build_pipa(cfg: Config, model: Segmentor, clips: bool = False) -> SelfTraining:
    """The ``pipa`` (``clips=False``) or ``pipa_video`` method on ``cfg.method.pipa.base``."""
    cls = _CLASSES[(cfg.method.pipa.base, clips)]
    return cls(cfg, model)
