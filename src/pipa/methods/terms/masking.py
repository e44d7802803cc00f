"""``masked_consistency`` (MIC): the student on a block-masked, augmented target image must
reproduce the teacher's pseudo-labels, ``L_mic = wCE(student(M ⊙ aug(x_t)), ȳ_t, q)``."""

from __future__ import annotations

from torch import Tensor

from ...config import MICConfig
from ...uda.masking import block_mask
from ...uda.teacher import segmentation_loss
from ..context import StepContext
from .base import Logs, Term


class MaskedConsistencyTerm(Term):
    """One extra student pass on the masked target image; pseudo-labels from the context."""

    name = "masked_consistency"

    def __init__(self, cfg: MICConfig, weight: float, start: int = 0) -> None:
        super().__init__(weight, start)
        self.block_size, self.mask_ratio, self.fill = cfg.block_size, cfg.mask_ratio, cfg.fill

    def applies(self, ctx: StepContext) -> bool:
        return ctx.target is not None and super().applies(ctx)

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:
        assert ctx.target is not None and ctx.pseudo_label is not None and ctx.pseudo_weight is not None
        img = ctx.augment(ctx.target["image"])
        block = self.block_size or max(1, round(img.shape[-2] / 16))  # auto: the reference's block/crop ratio
        keep = block_mask(tuple(img.shape), block, self.mask_ratio, ctx.generator, img.device)
        masked = img * keep
        if self.fill == "mean":  # MIC masks the normalised image: a masked block is the mean colour
            masked = masked + (1 - keep) * ctx.model.pixel_mean.to(img.dtype)
        extra = {"detail": ctx.model.draw_detail_box(masked, ctx.generator)} if ctx.model.hrda else {}
        out = ctx.student(masked, **extra)  # HRDA: its own detail crop, as MIC(HRDA)
        loss = segmentation_loss(ctx.model, out, ctx.pseudo_label, ctx.pseudo_weight)
        return loss, {"loss/mic_ce": loss.detach()}
