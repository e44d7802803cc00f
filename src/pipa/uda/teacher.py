"""Mean teacher: an EMA of the student that produces pseudo-labels on target images."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..core.constants import IGNORE_INDEX
from ..models.hrda import seg_loss


def ema_alpha(iteration: int, alpha: float) -> float:
    """DAFormer warm-up: ``α_t = min(1 - 1/(t+1), α)`` (a plain copy at t = 0)."""
    return min(1.0 - 1.0 / (iteration + 1), alpha)


class EMATeacher(nn.Module):
    """EMA copy of ``student``; ``θ̄ ← α_t θ̄ + (1-α_t) θ`` after every optimiser step.

    ``mode``: ``train_bn`` (DAFormer parity: the teacher stays in train mode with dropout and
    drop-path off, so batch norm normalises with the *target batch's* statistics) or ``eval``
    (running statistics, i.e. the source's). ``buffers``: ``copy`` the student's buffers (BN
    running statistics) or ``average`` them like parameters. The default ``train_bn`` was chosen by
    measurement (README: an eval-mode teacher's pseudo-labels are worse than AdaBN's)."""

    def __init__(self, student: nn.Module, alpha: float = 0.999, mode: str = "train_bn", buffers: str = "copy") -> None:
        super().__init__()
        if mode not in ("train_bn", "eval"):
            raise ValueError(f"teacher mode must be train_bn or eval, got {mode!r}")
        if buffers not in ("copy", "average"):
            raise ValueError(f"teacher buffers must be copy or average, got {buffers!r}")
        self.alpha, self.mode, self.buffers = alpha, mode, buffers
        self.ema = copy.deepcopy(student)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """``θ̄ ← α_t θ̄ + (1-α_t) θ`` with the warm-up ``α_t`` of :func:`ema_alpha`; buffers copied or averaged."""
        a = ema_alpha(iteration, self.alpha)
        t_params = list(self.ema.parameters())
        s_params = list(student.parameters())  # under no_grad: no detach (one op per tensor) needed
        torch._foreach_mul_(t_params, a)
        torch._foreach_add_(t_params, s_params, alpha=1 - a)
        for tb, sb in zip(self.ema.buffers(), student.buffers()):
            if self.buffers == "average" and tb.dtype.is_floating_point:
                tb.mul_(a).add_(sb, alpha=1 - a)
            else:
                tb.copy_(sb)

    def _set_mode(self) -> None:
        if self.mode == "eval":
            self.ema.eval()
            return
        self.ema.train()
        for m in self.ema.modules():  # dropout and drop-path off, batch norm on batch statistics
            name = type(m).__name__
            if isinstance(m, nn.modules.dropout._DropoutNd) or "DropPath" in name:
                m.eval()

    @torch.no_grad()
    def forward(self, images: Tensor):
        self._set_mode()
        # BN in train mode would also update the teacher's running stats; they are restored so
        # that the teacher's buffers follow the student only.
        saved = [b.clone() for b in self.ema.buffers()] if self.mode == "train_bn" else None
        out = self.ema(images)
        if saved is not None:
            for b, s in zip(self.ema.buffers(), saved):
                b.copy_(s)
        return out


@torch.no_grad()
def pseudo_label(logits: Tensor, threshold: float = 0.968, weight: str = "fraction", ignore_top: int = 0,
                 ignore_bottom: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher logits (B, K, H, W) -> labels (B, H, W), weights (B, H, W), confidence (B, H, W).

    ``fraction`` (DACS): every pixel of image b gets ``q_b`` = the fraction of its pixels whose
    max probability exceeds ``threshold``. ``pixel``: 1 where confident, else 0. Rows within
    ``ignore_top``/``ignore_bottom`` get weight 0 (DAFormer: the rectification border and ego car
    of Cityscapes, where pseudo-labels drift)."""
    probs = logits.float().softmax(1)
    conf, labels = probs.max(1)
    confident = (conf > threshold).float()
    if weight == "fraction":
        w = confident.mean((1, 2), keepdim=True).expand_as(conf).clone()
    elif weight == "pixel":
        w = confident
    else:
        raise ValueError(f"pseudo-label weight must be fraction or pixel, got {weight!r}")
    if ignore_top > 0:
        w[:, :ignore_top] = 0
    if ignore_bottom > 0:
        w[:, w.shape[1] - ignore_bottom :] = 0
    return labels, w, conf


def supervised_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over the non-ignored pixels of (B, K, H, W) logits and (B, H, W) labels; exactly 0
    (with a gradient) when every label is 255, where ``F.cross_entropy`` would give NaN."""
    ce = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / (labels != IGNORE_INDEX).sum().clamp_min(1)


def empty_label_images(labels: Tensor) -> Tensor:
    """Number of (B, H, W) label maps with no valid pixel, as a 0-dim float tensor."""
    return (labels != IGNORE_INDEX).flatten(1).any(1).logical_not().sum().float()


def weighted_ce(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """Mean over non-ignored pixels of ``weight * CE``; (B, K, H, W), (B, H, W), (B, H, W)."""
    ce = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (labels != IGNORE_INDEX).float()
    return (ce * weight * valid).sum() / valid.sum().clamp_min(1)


def segmentation_loss(model, out, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """The segmentation loss of a student pass: :func:`supervised_ce` (``weight`` None) or
    :func:`weighted_ce`; on HRDA's model, of the fused logits and of the detail crop's, weighted
    ``1 − λ_d`` and ``λ_d`` (``models/hrda.seg_loss``)."""
    def ce(logits: Tensor, lab: Tensor, w: Tensor | None) -> Tensor:
        return supervised_ce(logits, lab) if w is None else weighted_ce(logits, lab, w)

    return seg_loss(out.logits, out.detail, labels, weight, model.cfg.hrda.detail_loss_weight, ce)
