"""``feature_distance`` (DAFormer): keep the student's bottleneck features of thing classes near those
of the frozen ImageNet encoder, ``L_fd = mean ||F_θ(x_s) - F_imnet(x_s)||₂`` over thing-class cells."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import FDConfig
from ...models import Segmentor
from ...uda.fdist import feature_distance
from ..context import StepContext
from .base import Logs, Term


class FeatureDistanceTerm(Term):
    """Owns a frozen copy of the initial (pretrained) encoder; only meaningful with pretrained
    weights. Uses the student's source pass from the context (no extra student pass)."""

    name = "feature_distance"

    def __init__(self, model: Segmentor, cfg: FDConfig, weight: float, start: int = 0) -> None:
        super().__init__(weight, start)
        self.classes, self.min_ratio = list(cfg.classes), cfg.min_ratio
        self.imnet = copy.deepcopy(model.encoder).eval()
        for p in self.imnet.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FeatureDistanceTerm":
        super().train(mode)
        self.imnet.eval()  # frozen: batch norm keeps the ImageNet statistics
        return self

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:
        out = ctx.out_source
        if out.encoder_features is None:
            return out.logits.new_zeros(()), {}
        image = ctx.source["image"]
        if ctx.model.hrda:  # HRDA: FD on the context (low-resolution) features, as the reference
            image = F.interpolate(image, scale_factor=ctx.model.cfg.hrda.context_scale, mode="bilinear",
                                  align_corners=False)
        with torch.no_grad():
            frozen = self.imnet(ctx.model.normalize(image))[-1]
        loss = feature_distance(out.encoder_features[-1], frozen, ctx.source["label"], self.classes,
                                ctx.num_classes, self.min_ratio)
        return loss, {"loss/feature_distance": loss.detach()}
