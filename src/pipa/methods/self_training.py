"""Mean-teacher self-training recipes: ``self_training`` (DACS), ``daformer`` (+ rare class
sampling + ImageNet feature distance), ``mic`` (+ masked image consistency).

One step (no backward here; the trainer does it):
  L = CE(student(x_s), y_s)                                   source supervision
    + wCE(student(aug(ClassMix(x_s, x_t))), y_mix, w_mix)     pseudo-labels of the EMA teacher
    [+ λ_fd · FD(thing classes)]                              daformer, mic
    [+ λ_mic · wCE(student(mask ⊙ aug(x_t)), ȳ_t, q)]          mic
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..evaluation.metrics import IGNORE_INDEX
from ..models import Segmentor, SegOutput
from ..uda.augment import strong_augment
from ..uda.fdist import feature_distance
from ..uda.masking import block_mask
from ..uda.mixing import classmix, classmix_masks
from ..uda.teacher import EMATeacher, pseudo_label, weighted_ce
from .base import Batch, UDAMethod, step_generator


class SelfTraining(UDAMethod):
    """DACS: EMA teacher pseudo-labels + cross-domain ClassMix + strong augmentation."""

    uses_target: ClassVar[bool] = True

    def __init__(self, cfg: Config, model: Segmentor) -> None:
        super().__init__(cfg, model)
        t = cfg.method.teacher
        self.teacher = EMATeacher(model, t.alpha, t.mode, t.buffers)
        self.debug: dict[str, Tensor] = {}
        self.context: dict[str, Any] = {}

    def augment(self, images: Tensor, gen: torch.Generator) -> Tensor:
        a = self.cfg.method.aug
        return strong_augment(images, a.jitter_p, a.jitter_strength, a.blur_p, tuple(a.blur_sigma), gen)

    def source_terms(self, src: dict[str, Tensor], out: SegOutput, logs: dict[str, float]) -> Tensor:
        """Extra losses on the source forward (feature distance in daformer)."""
        return out.logits.new_zeros(())

    def target_terms(self, tgt: dict[str, Tensor], pl: Tensor, pw: Tensor, gen: torch.Generator,
                     logs: dict[str, float]) -> Tensor:
        """Extra losses on the target image (masked image consistency in mic)."""
        return pl.new_zeros((), dtype=torch.float32)

    def step(self, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        src, tgt = batch["source"], batch["target"]
        gen = step_generator(self.cfg.train.seed, iteration)
        out_s = self.student(src["image"])
        loss_src = F.cross_entropy(out_s.logits.float(), src["label"], ignore_index=IGNORE_INDEX)
        logs: dict[str, float] = {}
        extra_src = self.source_terms(src, out_s, logs)

        t = self.cfg.method.teacher
        out_t = self.teacher(tgt["image"])
        pl, pw, conf = pseudo_label(out_t.logits, t.pseudo_threshold, t.weight, t.ignore_top, t.ignore_bottom)
        mask = classmix_masks(src["label"], src.get("rcs_class"), gen)
        mix_img, mix_lbl, mix_w = classmix(mask, src["image"], tgt["image"], src["label"], pl, pw)
        mix_img = self.augment(mix_img, gen)
        out_m = self.student(mix_img)
        loss_mix = weighted_ce(out_m.logits, mix_lbl, mix_w)
        extra_tgt = self.target_terms(tgt, pl, pw, gen, logs)

        total = loss_src + loss_mix + extra_src + extra_tgt
        logs.update({
            "loss/source_ce": float(loss_src.detach()), "loss/mix_ce": float(loss_mix.detach()),
            "pseudo/confident_fraction": float((conf > t.pseudo_threshold).float().mean()),
            "pseudo/weight": float(pw.mean()),
        })
        # what add-on terms (PiPa++) build on; no extra computation
        self.context = {"out_s": out_s, "out_m": out_m, "out_t": out_t, "pseudo_label": pl, "confidence": conf,
                        "mix_mask": mask, "mix_label": mix_lbl, "generator": gen}
        self.debug = {"source": src["image"], "source_label": src["label"], "target": tgt["image"],
                      "mixed": mix_img.detach(), "mask": mask, "pseudo_label": pl, "weight": mix_w,
                      **({"target_label": tgt["label"]} if "label" in tgt else {})}
        return total, logs

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        self.teacher.update(self.model, iteration)


class DAFormer(SelfTraining):
    """``self_training`` + rare class sampling of source images + ImageNet feature distance."""

    rare_class_sampling: ClassVar[bool] = True

    def __init__(self, cfg: Config, model: Segmentor) -> None:
        super().__init__(cfg, model)
        self.imnet = None
        if cfg.method.fd.weight > 0:
            self.imnet = copy.deepcopy(model.encoder).eval()  # the frozen initial encoder
            for p in self.imnet.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "DAFormer":
        super().train(mode)
        if self.imnet is not None:
            self.imnet.eval()
        return self

    def source_terms(self, src: dict[str, Tensor], out: SegOutput, logs: dict[str, float]) -> Tensor:
        fd = self.cfg.method.fd
        if self.imnet is None or out.encoder_features is None:
            return out.logits.new_zeros(())
        with torch.no_grad():
            frozen = self.imnet(self.model.normalize(src["image"]))[-1]
        loss = fd.weight * feature_distance(out.encoder_features[-1], frozen, src["label"], fd.classes,
                                            self.model.num_classes, fd.min_ratio)
        logs["loss/feature_distance"] = float(loss.detach())
        return loss


class MIC(DAFormer):
    """``daformer`` + masked image consistency on the target image."""

    def target_terms(self, tgt: dict[str, Tensor], pl: Tensor, pw: Tensor, gen: torch.Generator,
                     logs: dict[str, float]) -> Tensor:
        m = self.cfg.method.mic
        if m.weight <= 0:
            return pl.new_zeros((), dtype=torch.float32)
        img = self.augment(tgt["image"], gen)
        masked = img * block_mask(tuple(img.shape), m.block_size, m.mask_ratio, gen, img.device)
        loss = m.weight * weighted_ce(self.student(masked).logits, pl, pw)
        logs["loss/mic_ce"] = float(loss.detach())
        return loss

