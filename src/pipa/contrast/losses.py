"""Contrastive losses of PiPa++ (method spec: "Pixel-wise contrast", "Patch-wise contrast",
"Temporal contrast"). Losses only compute: which rows are anchors, positives and negatives is
decided by the samplers (``samplers.py``) and the caller.

All inputs are unit vectors (rows), similarity ``s = a·b``, temperature ``τ``. The common term is

    ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / (exp(s_ip/τ) + Σ_{n∈N(i)} exp(s_in/τ)) )

computed with each row's maximum subtracted, so large similarities do not overflow; masks are
multiplications, never ``-inf`` fills, so an empty negative set gives finite values and finite
gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..core.constants import IGNORE_INDEX


def _full(x: Tensor) -> Tensor:
    """Similarities in at least float32 (autocast would give bf16 logits divided by τ)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _no_autocast(forward):  # type: ignore[no-untyped-def]
    def run(self, first: Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        with torch.autocast(first.device.type, enabled=False):
            return forward(self, first, *args, **kwargs)

    run.__doc__ = forward.__doc__
    return run


def _check_rows(name: str, x: Tensor, dim: int | None = None) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {dim}")


def _anchor_terms(logits: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """``logits`` (n, m) = s/τ; ``pos``/``neg`` (n, m) bool -> (ℓ (n,), qualifies (n,) bool), with
    ``ℓ_i = -mean_p log(exp(s_p) / (exp(s_p) + Σ_n exp(s_n)))``.

    Each positive's term is ``s_p - logaddexp(s_p, LSE_n)`` with ``LSE_n`` the log-sum-exp of the
    row's negatives: stable at any temperature (a shift by the row maximum, the anchor's own column
    included, made ``exp`` underflow in float32 below τ ≈ 0.023). Columns that are neither positive
    nor negative take no part, and rows without a negative get a finite value (``qualifies`` False)."""
    # masks as multiplications (a bool ``where`` over the (n, m) block is ~4x slower on CPU):
    # non-negatives get a finite "minus infinity" added, so exp() is 0 and gradients stay finite
    far = torch.finfo(logits.dtype).min / 4
    lse_neg = torch.logsumexp(logits + (~neg).to(logits.dtype) * far, 1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, lse_neg)
    n_pos = pos.sum(1)
    loss = -(log_prob * pos.to(logits.dtype)).sum(1) / n_pos.clamp_min(1)
    ok = (n_pos > 0) & neg.any(1)
    return loss, ok


def _pixel_chunk(anchors: Tensor, labels: Tensor, offset: int, contrast: Tensor, contrast_labels: Tensor,
                 inv_t: float) -> tuple[Tensor, Tensor]:
    logits = anchors @ contrast.t() * inv_t
    same = labels[:, None] == contrast_labels[None, :]
    valid_c = (contrast_labels != IGNORE_INDEX)[None, :]
    cols = torch.arange(contrast.shape[0], device=anchors.device)[None, :]
    not_self = cols != (offset + torch.arange(anchors.shape[0], device=anchors.device))[:, None]
    return _anchor_terms(logits, same & valid_c & not_self, ~same & valid_c)


class PixelContrastLoss(nn.Module):
    """Supervised pixel contrast ``L_pix`` (PiPa, ACM MM 2023; PiPa++ arXiv 2407.17101).

    The contrast set is the anchors themselves (an anchor is never its own positive) followed by
    the optional ``contrast`` rows (memory entries, another frame). Label 255 is ignored: such an
    anchor is skipped and such a contrast row is neither positive nor negative.

    Shape:
        anchors (N, D), anchor_labels (N,) int64; contrast (M, D), contrast_labels (M,) int64.
        Returns a scalar: the mean of ``ℓ_i`` over anchors with >= 1 positive and >= 1 negative,
        or an exact 0 that still back-propagates when there is none.

    ``chunk_size`` anchors are processed at a time; when there is more than one chunk and gradients
    are enabled, each chunk is recomputed in backward (activation checkpointing), so peak memory
    is O(chunk_size · (N + M)) rather than O(N · (N + M)).
    """

    def __init__(self, temperature: float = 0.1, chunk_size: int = 1024) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.temperature, self.chunk_size = temperature, chunk_size

    @_no_autocast
    def forward(self, anchors: Tensor, anchor_labels: Tensor, contrast: Tensor | None = None,
                contrast_labels: Tensor | None = None) -> Tensor:
        _check_rows("anchors", anchors)
        anchors = _full(anchors)
        contrast = _full(contrast) if contrast is not None else None
        if anchor_labels.shape != anchors.shape[:1]:
            raise ValueError(f"anchor_labels must be ({anchors.shape[0]},), got {tuple(anchor_labels.shape)}")
        if (contrast is None) != (contrast_labels is None):
            raise ValueError("give contrast and contrast_labels together")
        zero = anchors.sum() * 0.0
        if contrast is not None and contrast_labels is not None:
            _check_rows("contrast", contrast, anchors.shape[1])
            if contrast_labels.shape != contrast.shape[:1]:
                raise ValueError(f"contrast_labels must be ({contrast.shape[0]},), got {tuple(contrast_labels.shape)}")
            zero = zero + contrast.sum() * 0.0
            all_rows = torch.cat([anchors, contrast.to(anchors.dtype)])
            all_labels = torch.cat([anchor_labels, contrast_labels])
        else:
            all_rows, all_labels = anchors, anchor_labels
        if anchors.shape[0] == 0:
            return zero
        inv_t = 1.0 / self.temperature
        total, count = zero, zero.detach()  # the count stays on the device: no host synchronisation
        # recompute chunks in backward only when there is more than one (bounded peak memory)
        grad = torch.is_grad_enabled() and all_rows.requires_grad and anchors.shape[0] > self.chunk_size
        for start in range(0, anchors.shape[0], self.chunk_size):
            a, l = anchors[start:start + self.chunk_size], anchor_labels[start:start + self.chunk_size]
            off = start
            if grad:
                loss, ok = checkpoint(_pixel_chunk, a, l, off, all_rows, all_labels, inv_t, use_reentrant=False)
            else:
                loss, ok = _pixel_chunk(a, l, off, all_rows, all_labels, inv_t)
            ok = ok & (l != IGNORE_INDEX)
            total = total + (loss * ok).sum()
            count = count + ok.sum()
        return total / count.clamp_min(1)  # an exact 0 (with gradient) when no anchor qualifies


class PatchContrastLoss(nn.Module):
    """Patch-wise contrast ``L_patch``: the same place seen in two views agrees, other places differ.

    Shape:
        view1, view2 (K, D): row k of both is the same feature cell (the positive pair);
        negatives (M, D); valid (K, M) bool, which negatives count for anchor k (None: all).
        Returns the mean over k of ``(ℓ(view1[k] | view2[k]) + ℓ(view2[k] | view1[k])) / 2``,
        both directions against the same negatives; an exact 0 (with gradient) when K = 0.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def _direction(self, a: Tensor, p: Tensor, negatives: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        inv_t = 1.0 / self.temperature
        pos = (a * p).sum(1, keepdim=True) * inv_t
        neg = a @ negatives.t() * inv_t
        logits = torch.cat([pos, neg], 1)
        pos_mask = torch.zeros_like(logits, dtype=torch.bool)
        pos_mask[:, 0] = True
        neg_mask = torch.cat([torch.zeros_like(valid[:, :1]), valid], 1)
        return _anchor_terms(logits, pos_mask, neg_mask)

    @_no_autocast
    def forward(self, view1: Tensor, view2: Tensor, negatives: Tensor, valid: Tensor | None = None) -> Tensor:
        view1, view2, negatives = _full(view1), _full(view2).to(_full(view1).dtype), _full(negatives).to(_full(view1).dtype)
        _check_rows("view1", view1)
        _check_rows("view2", view2, view1.shape[1])
        _check_rows("negatives", negatives, view1.shape[1])
        if view1.shape[0] != view2.shape[0]:
            raise ValueError(f"view1 and view2 need the same number of rows, got {view1.shape[0]} and {view2.shape[0]}")
        k, m = view1.shape[0], negatives.shape[0]
        if valid is None:
            valid = torch.ones(k, m, dtype=torch.bool, device=view1.device)
        if valid.shape != (k, m):
            raise ValueError(f"valid must be ({k}, {m}), got {tuple(valid.shape)}")
        zero = (view1.sum() + view2.sum() + negatives.sum()) * 0.0
        if k == 0:
            return zero
        l12, ok = self._direction(view1, view2, negatives, valid)
        l21, _ = self._direction(view2, view1, negatives, valid)  # the same negatives: the same anchors qualify
        # anchors without a valid negative have no contrast: left out of the mean, as in L_pix
        return zero + ((l12 + l21) * ok).sum() / ok.sum().clamp_min(1) / 2


class TemporalContrastLoss(nn.Module):
    """Temporal contrast ``L_temp``: anchors from frame τ (student), contrast set from frame τ-k
    (teacher). Positives of anchor i: contrast cells with the same label; with optical flow, also
    ``matched[i]``, the contrast embedding sampled at the flow-corresponding location, when
    ``matched_valid[i]`` (in bounds and the two pseudo-labels agree). Negatives: contrast cells
    with another label. Label 255 is ignored on both sides.

    Shape:
        anchors (N, D), anchor_labels (N,); contrast (M, D), contrast_labels (M,);
        matched (N, D) and matched_valid (N,) bool, or both None (no flow).
        Returns the mean of ``ℓ_i`` over anchors with >= 1 positive and >= 1 negative (exact 0
        with gradient when there is none).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    @_no_autocast
    def forward(self, anchors: Tensor, anchor_labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
                matched: Tensor | None = None, matched_valid: Tensor | None = None) -> Tensor:
        anchors = _full(anchors)
        contrast = _full(contrast).to(anchors.dtype)
        matched = _full(matched).to(anchors.dtype) if matched is not None else None
        _check_rows("anchors", anchors)
        _check_rows("contrast", contrast, anchors.shape[1])
        if (matched is None) != (matched_valid is None):
            raise ValueError("give matched and matched_valid together")
        inv_t = 1.0 / self.temperature
        zero = (anchors.sum() + contrast.sum()) * 0.0
        logits = anchors @ contrast.t() * inv_t
        same = anchor_labels[:, None] == contrast_labels[None, :]
        valid_c = (contrast_labels != IGNORE_INDEX)[None, :]
        pos, neg = same & valid_c, ~same & valid_c
        if matched is not None and matched_valid is not None:
            _check_rows("matched", matched, anchors.shape[1])
            zero = zero + matched.sum() * 0.0
            logits = torch.cat([logits, (anchors * matched).sum(1, keepdim=True) * inv_t], 1)
            pos = torch.cat([pos, matched_valid[:, None]], 1)
            neg = torch.cat([neg, torch.zeros_like(matched_valid[:, None])], 1)
        if anchors.shape[0] == 0:
            return zero
        loss, ok = _anchor_terms(logits, pos, neg)
        ok = ok & (anchor_labels != IGNORE_INDEX)
        return zero + (loss * ok).sum() / ok.sum().clamp_min(1)  # exact 0 when no anchor qualifies
