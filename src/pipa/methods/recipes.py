"""Base recipes: the supervised and mean-teacher cores that every method starts from. A recipe runs
the network passes of its own loss, returns ``(StepContext, loss, logs)``, and never calls
``backward`` (the trainer does).

- :class:`SourceOnly`: ``L = CE(student(x_s), y_s)`` (optionally on strongly augmented images).
- :class:`SelfTraining` (DACS):
    ``L = CE(student(x_s), y_s) + wCE(student(aug(ClassMix(x_s, x_t))), y_mix, w_mix)``
  with pseudo-labels ``ȳ_t`` and quality weights ``q`` from the EMA teacher on ``x_t``.
DAFormer and MIC are :class:`SelfTraining` plus rare class sampling and the terms
``feature_distance`` / ``masked_consistency`` (``pipa.methods.terms``).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import AugConfig, TeacherConfig
from ..core.rng import step_generator
from ..models import Segmentor, SegOutput
from ..uda.augment import strong_augment
from ..uda.mixing import classmix, classmix_masks
from ..uda.teacher import EMATeacher, empty_label_images, pseudo_label, segmentation_loss
from .context import Batch, Forward, StepContext
from .terms.base import Logs


class Recipe(nn.Module):
    """A base recipe. ``uses_target``: does it need unlabelled target batches?"""

    uses_target: ClassVar[bool] = False

    def __init__(self, aug: AugConfig, seed: int) -> None:
        super().__init__()
        self.aug, self.seed = aug, seed

    def augment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Strong colour jitter and blur (DACS), drawn from ``generator``. (B, 3, H, W) -> same."""
        a = self.aug
        return strong_augment(images, a.jitter_p, a.jitter_strength, a.blur_p, tuple(a.blur_sigma), generator,
                              a.jitter_ops)

    def forward(self, batch: Batch, iteration: int, model: Segmentor, student: Forward, micro: int = 0
                ) -> tuple[StepContext, Tensor, Logs]:
        """One step's passes and loss: ``batch['source']`` (and ``batch['target']``) -> context,
        scalar loss, logs."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, model: Segmentor, iteration: int) -> None:
        """Called after the optimiser step (the teacher's EMA update)."""


class SourceOnly(Recipe):
    """``L = CE(student(x_s), y_s)``, 255 ignored; ``augment_source`` applies the strong
    augmentation to the source images first (``source_only_aug``: separates what adaptation adds
    from what augmentation adds)."""

    def __init__(self, aug: AugConfig, seed: int, augment_source: bool = False) -> None:
        super().__init__(aug, seed)
        self.augment_source = augment_source

    def forward(self, batch: Batch, iteration: int, model: Segmentor, student: Forward, micro: int = 0
                ) -> tuple[StepContext, Tensor, Logs]:
        src = batch["source"]
        gen = step_generator(self.seed, iteration, micro)
        image = self.augment(src["image"], gen) if self.augment_source else src["image"]
        out = student(image, **detail_kw(model, image, gen))
        loss = segmentation_loss(model, out, src["label"])
        ctx = StepContext(iteration, gen, model, student, partial(self.augment, generator=gen), src, out)
        return ctx, loss, {"loss/source_ce": loss.detach(), "data/empty_label_images": empty_label_images(src["label"])}


class SelfTraining(Recipe):
    """DACS: EMA teacher pseudo-labels + cross-domain ClassMix + strong augmentation (see module
    docstring). Owns the teacher; with rare class sampling, the sampled class is always pasted."""

    uses_target: ClassVar[bool] = True

    def __init__(self, model: Segmentor, teacher: TeacherConfig, aug: AugConfig, seed: int,
                 shared_encoder: bool = True) -> None:
        super().__init__(aug, seed)
        self.t, self.shared_encoder = teacher, shared_encoder
        self.teacher = EMATeacher(model, teacher.alpha, teacher.mode, teacher.buffers)
        # further target frames the teacher sees in its one pass this step (set by the method from
        # its terms' ``teacher_frames``): one batch, so the frames share the teacher's normalisation
        self.teacher_frames: tuple[str, ...] = ()

    def forward(self, batch: Batch, iteration: int, model: Segmentor, student: Forward, micro: int = 0
                ) -> tuple[StepContext, Tensor, Logs]:
        src, tgt, t = batch["source"], batch["target"], self.t
        gen = step_generator(self.seed, iteration, micro)
        joint = self.shared_encoder and model.batch_independent_encoder and not model.hrda \
            and src["image"].shape == tgt["image"].shape
        if not joint:  # the reference order: source pass, teacher, mix, mixed pass
            out_s = student(src["image"], **detail_kw(model, src["image"], gen))
        out_t, frames = self.teacher_pass(tgt)
        pl, pw, conf = pseudo_label(out_t.logits, t.pseudo_threshold, t.weight, t.ignore_top, t.ignore_bottom)
        if "valid_pseudo" in tgt:  # the dataset's pseudo-label margins (HRDA's croppl v2)
            pw = pw * tgt["valid_pseudo"].to(pw.dtype)
        mask = classmix_masks(src["label"], src.get("rcs_class"), gen, model.num_classes)
        mix_img, mix_lbl, mix_w = classmix(mask, src["image"], tgt["image"], src["label"], pl, pw)
        mix_img = self.augment(mix_img, gen)
        if joint:  # MiT (no batch norm): one encoder pass for both batches, the decoder on each
            out_s, out_m = student(torch.cat([src["image"], mix_img]), split=src["image"].shape[0])
        else:
            out_m = student(mix_img, **detail_kw(model, mix_img, gen))
        loss_src = segmentation_loss(model, out_s, src["label"])  # 0, not NaN, if every label is 255
        loss_mix = segmentation_loss(model, out_m, mix_lbl, mix_w)

        ctx = StepContext(iteration, gen, model, student, partial(self.augment, generator=gen), src, out_s,
                          tgt, self.teacher, out_t, pl, pw, conf, mask, mix_img, mix_lbl, mix_w, out_m, frames)
        logs: Logs = {"loss/source_ce": loss_src.detach(), "loss/mix_ce": loss_mix.detach(),
                      "data/empty_label_images": empty_label_images(src["label"]),
                      "pseudo/confident_fraction": (conf > t.pseudo_threshold).float().mean(),
                      "pseudo/weight": pw.mean()}
        return ctx, loss_src + loss_mix, logs

    def teacher_pass(self, tgt: dict[str, Tensor]) -> tuple[SegOutput, dict[str, SegOutput]]:
        """The teacher on ``tgt['image']`` and on the frames of ``teacher_frames`` in ``tgt``, one batch."""
        keys = [k for k in self.teacher_frames if k in tgt and tgt[k].shape == tgt["image"].shape]
        out = self.teacher(torch.cat([tgt["image"], *(tgt[k] for k in keys)]) if keys else tgt["image"])
        if not keys:
            return out, {}
        parts = split_output(out, len(keys) + 1)
        return parts[0], dict(zip(keys, parts[1:]))

    @torch.no_grad()
    def after_step(self, model: Segmentor, iteration: int) -> None:
        self.teacher.update(model, iteration)


def detail_kw(model: Segmentor, images: Tensor, gen: torch.Generator) -> dict[str, object]:
    """The keyword of a training pass: HRDA's detail crop, drawn from the step's generator; none
    for single-resolution models (their draws, and so their runs, are unchanged)."""
    return {"detail": model.draw_detail_box(images, gen)} if model.hrda else {}


def split_output(out: SegOutput, n: int) -> list[SegOutput]:
    """A pass over ``n`` stacked batches -> ``n`` outputs (views, no copies)."""
    enc = [f.chunk(n) for f in out.encoder_features] if out.encoder_features is not None else None
    return [SegOutput(lg, ft, None if enc is None else [e[i] for e in enc])
            for i, (lg, ft) in enumerate(zip(out.logits.chunk(n), out.features.chunk(n)))]
