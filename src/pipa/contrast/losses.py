"""Contrastive losses of PiPa++ (method spec: "Pixel-wise contrast", "Patch-wise contrast",
"Temporal contrast"). Losses only compute: which rows are anchors, positives and negatives is
decided by the samplers (``samplers.py``) and the caller.

All inputs are unit vectors (rows), similarity ``s = a·b``, temperature ``τ``. The common term is

    ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / (exp(s_ip/τ) + Σ_{n∈N(i)} exp(s_in/τ)) )

computed as ``softplus(LSE_n - s_p/τ)`` (``LSE_n``: the log-sum-exp of the anchor's negatives),
stable at any temperature, with a closed-form backward (:class:`_PositiveTerms`); masks are
additions and multiplications, never ``-inf`` fills, so an empty negative set gives finite values
and finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def _far(dtype: torch.dtype) -> float:
    """A finite "minus infinity": added to a logit, exp() gives 0 and gradients stay finite."""
    return torch.finfo(dtype).min / 4


def _contrast_labels(labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Contrast-row labels (m,) -> (labels with 255 as -1, which no anchor label equals; (1, m) 1.0 on
    ignored rows; the number of valid rows)."""
    ignored = labels == IGNORE_INDEX
    return labels.masked_fill(ignored, -1), ignored.to(dtype)[None, :], (~ignored).sum()


def _class_masks(labels: Tensor, contrast_labels: Tensor, invalid: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Anchor labels (n,) against :func:`_contrast_labels` output -> (``same`` (n, m) 1.0 where the
    classes agree on a valid row, ``neg_bias`` (n, m) 0 on negatives and :func:`_far` elsewhere)."""
    same = (labels[:, None] == contrast_labels[None, :]).to(dtype)
    return same, (same + invalid).mul_(_far(dtype))


class _PositiveTerms(torch.autograd.Function):
    """``Σ_p softplus(LSE_i - s_ip)`` of every row ``i``, with ``LSE_i`` the log-sum-exp of the
    row's negatives, and a closed-form backward.

    ``softplus(LSE - s_p) = -log(exp(s_p) / (exp(s_p) + exp(LSE)))`` is stable at any temperature
    (a shift by the row maximum, the anchor's own column included, made ``exp`` underflow in
    float32 below τ ≈ 0.023). With ``x = LSE - s``: ``∂/∂s_p = -σ(x_p)`` on a positive and
    ``∂/∂s_n = exp(s_n - LSE) · Σ_p σ(x_p)`` on a negative, a few passes over the block where
    autograd would chain back through every step of the log-sum-exp.

    Inputs: ``logits`` (n, m) = s/τ; ``pos`` (n, m) 0/1 floats, or None when no column of the block
    is a positive; ``neg_bias`` (n, m) 0 on negatives and :func:`_far` elsewhere (masks as additions
    and multiplications: a bool ``where`` over the block is ~4x slower on CPU); optionally one more
    positive column per row: ``extra`` (n,) logits, ``extra_pos`` (n,) 0/1 floats."""

    @staticmethod
    def forward(ctx, logits: Tensor, pos: Tensor | None, neg_bias: Tensor, extra: Tensor | None,  # type: ignore[override]
                extra_pos: Tensor | None) -> Tensor:
        lse = torch.logsumexp(logits + neg_bias, 1, keepdim=True)
        x = lse - logits
        total = (F.softplus(x) * pos).sum(1) if pos is not None else logits.new_zeros(logits.shape[0])
        xe = None
        if extra is not None and extra_pos is not None:
            xe = lse[:, 0] - extra
            total = total + F.softplus(xe) * extra_pos
        ctx.save_for_backward(x, pos, neg_bias, xe, extra_pos)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, Tensor | None, None]:  # type: ignore[override]
        x, pos, neg_bias, xe, extra_pos = ctx.saved_tensors
        # r = σ(x) on positives; exp(s - LSE) = exp(bias - x) is 0 off the negatives, and on a row
        # without negatives every σ(x_p) is exactly 0
        r = torch.sigmoid(x).mul_(pos) if pos is not None else None
        r_sum = r.sum(1, keepdim=True) if r is not None else x.new_zeros(x.shape[0], 1)
        d_extra = None
        if xe is not None:
            re = torch.sigmoid(xe).mul_(extra_pos)
            r_sum = r_sum + re[:, None]
            d_extra = -grad * re
        d = torch.exp(neg_bias - x).mul_(r_sum)
        if r is not None:
            d.sub_(r)
        return d.mul_(grad[:, None]), None, None, d_extra, None


def _pixel_chunk(anchors: Tensor, labels: Tensor, offset: int, contrast: Tensor, contrast_labels: Tensor,
                 invalid: Tensor, n_valid: Tensor, inv_t: float) -> tuple[Tensor, Tensor]:
    """ℓ of the anchors from row ``offset`` on against every contrast row, and which qualify.
    ``contrast_labels`` is -1 where ignored (equal to no label); ``invalid`` (1, m) is 1 there and
    ``n_valid`` counts the others."""
    logits = (anchors * inv_t) @ contrast.t()
    same, neg_bias = _class_masks(labels, contrast_labels, invalid, logits.dtype)  # self included in same
    n_same = same.sum(1)
    same.diagonal(offset).zero_()  # an anchor is never its own positive (its own column is offset + row)
    n_pos = n_same - (labels != IGNORE_INDEX).to(n_same.dtype)
    loss = _PositiveTerms.apply(logits, same, neg_bias, None, None) / n_pos.clamp_min(1)
    return loss, (n_pos > 0) & (n_valid - n_same > 0)


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
        all_labels, invalid, n_valid = _contrast_labels(all_labels, anchors.dtype)
        total, count = zero, zero.detach()  # the count stays on the device: no host synchronisation
        # recompute chunks in backward only when there is more than one (bounded peak memory)
        grad = torch.is_grad_enabled() and all_rows.requires_grad and anchors.shape[0] > self.chunk_size
        for start in range(0, anchors.shape[0], self.chunk_size):
            a, l = anchors[start:start + self.chunk_size], anchor_labels[start:start + self.chunk_size]
            off = start
            if grad:
                loss, ok = checkpoint(_pixel_chunk, a, l, off, all_rows, all_labels, invalid, n_valid, inv_t,
                                      use_reentrant=False)
            else:
                loss, ok = _pixel_chunk(a, l, off, all_rows, all_labels, invalid, n_valid, inv_t)
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

    def _direction(self, a: Tensor, p: Tensor, negatives: Tensor, neg_bias: Tensor) -> Tensor:
        a = a * (1.0 / self.temperature)
        pos = (a * p).sum(1)
        return _PositiveTerms.apply(a @ negatives.t(), None, neg_bias, pos, torch.ones_like(pos))

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
        neg_bias = (~valid).to(view1.dtype).mul_(_far(view1.dtype))
        ok = valid.any(1)  # the same negatives in both directions: the same anchors qualify
        l12 = self._direction(view1, view2, negatives, neg_bias)
        l21 = self._direction(view2, view1, negatives, neg_bias)
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
        zero = (anchors.sum() + contrast.sum()) * 0.0
        if matched is not None:
            _check_rows("matched", matched, anchors.shape[1])
            zero = zero + matched.sum() * 0.0
        if anchors.shape[0] == 0:
            return zero
        a = anchors * (1.0 / self.temperature)
        logits = a @ contrast.t()
        c_labels, invalid, n_valid = _contrast_labels(contrast_labels, logits.dtype)
        same, neg_bias = _class_masks(anchor_labels, c_labels, invalid, logits.dtype)
        n_pos = same.sum(1)
        has_neg = n_valid - n_pos > 0
        extra = extra_pos = None
        if matched is not None and matched_valid is not None:
            extra, extra_pos = (a * matched).sum(1), matched_valid.to(logits.dtype)
            n_pos = n_pos + extra_pos
        loss = _PositiveTerms.apply(logits, same, neg_bias, extra, extra_pos) / n_pos.clamp_min(1)
        ok = (n_pos > 0) & has_neg & (anchor_labels != IGNORE_INDEX)
        return zero + (loss * ok).sum() / ok.sum().clamp_min(1)  # exact 0 when no anchor qualifies
