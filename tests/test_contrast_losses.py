"""The PiPa++ losses against naive per-anchor loops written from the spec's formulas (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipa.contrast import PatchContrastLoss, PixelContrastLoss, TemporalContrastLoss

IGN = 255


def _unit(n, d, g):
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def naive_pixel(anchors, labels, contrast, contrast_labels, tau):
    """ℓ_i = -1/|P| Σ_p log(exp(s_ip/τ) / (exp(s_ip/τ) + Σ_n exp(s_in/τ))), C = A ∪ memory."""
    rows = list(anchors) + ([] if contrast is None else list(contrast))
    labs = labels.tolist() + ([] if contrast_labels is None else contrast_labels.tolist())
    terms = []
    for i, a in enumerate(anchors):
        yi = int(labels[i])
        if yi == IGN:
            continue
        pos = [j for j in range(len(rows)) if j != i and labs[j] == yi]
        neg = [j for j in range(len(rows)) if labs[j] != yi and labs[j] != IGN]
        if not pos or not neg:
            continue
        sneg = sum(math.exp(float(a @ rows[n]) / tau) for n in neg)
        li = 0.0
        for p in pos:
            ep = math.exp(float(a @ rows[p]) / tau)
            li -= math.log(ep / (ep + sneg))
        terms.append(li / len(pos))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("chunk", [1024, 3])  # one chunk, and many recomputed chunks
def test_pixel_loss_matches_naive_loop(with_memory, chunk):
    g = torch.Generator().manual_seed(0)
    a = _unit(11, 5, g)
    la = torch.tensor([0, 1, 1, 2, 0, IGN, 2, 2, 1, 3, 0])  # class 3 has no positive among anchors
    c = _unit(7, 5, g) if with_memory else None
    lc = torch.tensor([3, 0, IGN, 1, 4, 2, 2]) if with_memory else None
    tau = 0.2
    got = PixelContrastLoss(tau, chunk_size=chunk)(a.requires_grad_(), la, c, lc)
    assert got.item() == pytest.approx(naive_pixel(a.detach(), la, c, lc, tau), rel=1e-10)
    got.backward()
    assert torch.isfinite(a.grad).all()


def test_pixel_loss_chunked_gradients_equal_unchunked():
    g = torch.Generator().manual_seed(1)
    a, c = _unit(20, 4, g), _unit(9, 4, g)
    la, lc = torch.randint(0, 3, (20,), generator=g), torch.randint(0, 3, (9,), generator=g)
    grads = []
    for chunk in (100, 4):
        x = a.clone().requires_grad_()
        PixelContrastLoss(0.1, chunk_size=chunk)(x, la, c, lc).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_anchor_is_never_its_own_positive():
    # two anchors of one class, one of another: anchor 0's only positive is anchor 1
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    la = torch.tensor([0, 0, 1])
    tau = 0.5
    s01, s02 = 0.0, 1.0  # a0·a1, a0·a2
    l0 = -math.log(math.exp(s01 / tau) / (math.exp(s01 / tau) + math.exp(s02 / tau)))
    l1 = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(0.0)))  # a1·a0 = 0, a1·a2 = 0
    # anchor 2 has no positive: not counted
    assert PixelContrastLoss(tau)(a, la).item() == pytest.approx((l0 + l1) / 2, rel=1e-12)


@pytest.mark.parametrize("case", ["one_class", "all_ignore", "empty", "empty_memory", "single_anchor"])
def test_pixel_loss_degenerate_batches_are_zero_and_backpropagate(case):
    g = torch.Generator().manual_seed(2)
    n = {"empty": 0, "single_anchor": 1}.get(case, 6)
    a = _unit(n, 4, g).float().requires_grad_()
    la = {"one_class": torch.zeros(n, dtype=torch.long), "all_ignore": torch.full((n,), IGN)}.get(
        case, torch.arange(n) % 2)
    mem = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) if case == "empty_memory" else (None, None)
    loss = PixelContrastLoss(0.1)(a, la, *mem)
    assert torch.isfinite(loss)
    if case != "empty_memory":
        assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def naive_patch(v1, v2, negs, valid, tau):
    def one(a, p, k):
        ep = math.exp(float(a @ p) / tau)
        sn = sum(math.exp(float(a @ negs[m]) / tau) for m in range(len(negs)) if valid[k, m])
        return -math.log(ep / (ep + sn))

    # an anchor without a valid negative has no contrast: it is left out of the mean (as in L_pix)
    terms = [(one(v1[k], v2[k], k) + one(v2[k], v1[k], k)) / 2 for k in range(len(v1)) if valid[k].any()]
    return sum(terms) / len(terms) if terms else 0.0


def test_patch_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    v1, v2, negs = _unit(6, 5, g), _unit(6, 5, g), _unit(9, 5, g)
    valid = torch.rand(6, 9, generator=g) > 0.4
    valid[2] = False  # an anchor with no valid negative: not counted
    got = PatchContrastLoss(0.3)(v1, v2, negs, valid)
    assert got.item() == pytest.approx(naive_patch(v1, v2, negs, valid, 0.3), rel=1e-10)
    full = PatchContrastLoss(0.3)(v1, v2, negs)
    assert full.item() == pytest.approx(naive_patch(v1, v2, negs, torch.ones(6, 9, dtype=torch.bool), 0.3), rel=1e-10)


def test_patch_loss_pulls_views_together():
    """A gradient step on view1 must raise its similarity to the positive (sign check)."""
    g = torch.Generator().manual_seed(4)
    v1, v2, negs = _unit(5, 8, g).requires_grad_(), _unit(5, 8, g), _unit(10, 8, g)
    PatchContrastLoss(0.1)(v1, v2, negs).backward()
    before = (v1 * v2).sum(1)
    after = ((v1 - 0.01 * v1.grad) * v2).sum(1)
    assert (after > before).all()


def naive_temporal(a, la, c, lc, matched, mvalid, tau):
    terms = []
    for i in range(len(a)):
        if int(la[i]) == IGN:
            continue
        pos = [float(a[i] @ c[j]) for j in range(len(c)) if int(lc[j]) == int(la[i])]
        if matched is not None and bool(mvalid[i]):
            pos.append(float(a[i] @ matched[i]))
        neg = [float(a[i] @ c[j]) for j in range(len(c)) if int(lc[j]) != int(la[i]) and int(lc[j]) != IGN]
        if not pos or not neg:
            continue
        sn = sum(math.exp(s / tau) for s in neg)
        terms.append(sum(-math.log(math.exp(s / tau) / (math.exp(s / tau) + sn)) for s in pos) / len(pos))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("flow", [False, True])
def test_temporal_loss_matches_naive_loop(flow):
    g = torch.Generator().manual_seed(5)
    a, c, m = _unit(8, 4, g), _unit(10, 4, g), _unit(8, 4, g)
    la = torch.tensor([0, 1, 2, IGN, 0, 1, 3, 2])  # class 3: no same-class cell in frame τ-k
    lc = torch.tensor([0, 0, 1, 2, IGN, 1, 0, 2, 2, 1])
    mv = torch.tensor([True, False, True, True, False, True, True, False])
    args = (m, mv) if flow else (None, None)
    got = TemporalContrastLoss(0.2)(a, la, c, lc, *args)
    assert got.item() == pytest.approx(naive_temporal(a, la, c, lc, *args, 0.2), rel=1e-10)


def test_temporal_loss_without_any_qualifying_anchor_is_zero():
    a = torch.randn(4, 3).requires_grad_()
    loss = TemporalContrastLoss()(a, torch.zeros(4, dtype=torch.long), torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(a.grad).all()


def test_gradcheck_all_losses():
    g = torch.Generator().manual_seed(6)

    def leaf(n, d=3):
        return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()

    la, lc = torch.tensor([0, 1, 0, 1, 2]), torch.tensor([2, 0, 1])
    assert torch.autograd.gradcheck(lambda a, c: PixelContrastLoss(0.5, chunk_size=2)(a, la, c, lc), (leaf(5), leaf(3)))
    valid = torch.tensor([[True, False, True, True], [True, True, True, False], [False, True, True, True]])
    assert torch.autograd.gradcheck(lambda x, y, n: PatchContrastLoss(0.5)(x, y, n, valid), (leaf(3), leaf(3), leaf(4)))
    mv = torch.tensor([True, False, True, True, False])
    assert torch.autograd.gradcheck(
        lambda a, c, m: TemporalContrastLoss(0.5)(a, la, c, lc, m, mv), (leaf(5), leaf(3), leaf(5)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature"):
        PixelContrastLoss(0.0)
    with pytest.raises(ValueError, match="anchor_labels"):
        PixelContrastLoss()(torch.randn(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="valid"):
        PatchContrastLoss()(torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 2), torch.ones(3, 3, dtype=torch.bool))
