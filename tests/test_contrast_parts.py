"""Memory FIFO and resume, sampler balance and hard fraction, view alignment, label pooling and
flow warping, each against a hand-computed or naive expectation."""

import pytest
import torch
import torch.nn.functional as F

from pipa.contrast import (Box, ImageSampler, SemanticMemory, VideoSampler, class_balanced, flow_to_cells,
                           overlap_cells, pool_labels, sample_view_pair, warp_backward)
from pipa.contrast.views import box_iou

IGN = 255


# -- memory -----------------------------------------------------------------------------------
def _rows(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1)


def test_memory_keeps_newest_entries_per_class_in_fifo_order():
    mem = SemanticMemory(num_classes=3, size_per_class=3, dim=1)
    mem.push(_rows([1, 2, 10]), torch.tensor([0, 0, 1]))
    mem.push(_rows([3, 4, 99]), torch.tensor([0, 0, IGN]))  # 255 is dropped, never a class
    mem.push(_rows([5, 6, 7, 8, 11]), torch.tensor([0, 0, 0, 0, 1]))  # more than fits in one push
    assert mem.fill().tolist() == [3, 2, 0]
    f, lab = mem.get()
    assert lab.tolist() == [0, 0, 0, 1, 1]
    assert f.view(-1).tolist() == [6, 7, 8, 10, 11]  # the newest three of class 0, oldest first


def test_memory_state_dict_restores_contents_and_order():
    mem = SemanticMemory(2, 4, 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mem.push(torch.randn(3, 2, generator=g), torch.randint(0, 2, (3,), generator=g))
    other = SemanticMemory(2, 4, 2)
    other.load_state_dict(mem.state_dict())
    for a, b in zip(mem.get(), other.get()):
        assert torch.equal(a, b)
    # and they keep evolving identically (the write pointer is restored too)
    x, y = torch.randn(3, 2, generator=g), torch.tensor([1, 1, 0])
    mem.push(x, y)
    other.push(x, y)
    for a, b in zip(mem.get(), other.get()):
        assert torch.equal(a, b)


def test_memory_get_per_class_and_empty():
    mem = SemanticMemory(3, 5, 2)
    f, lab = mem.get()
    assert f.shape == (0, 2) and lab.shape == (0,)
    mem.push(torch.randn(5, 2), torch.tensor([0, 0, 0, 0, 2]))
    f, lab = mem.get(per_class=2)
    assert lab.tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="labels"):
        mem.push(torch.randn(1, 2), torch.tensor([7]))


# -- samplers ---------------------------------------------------------------------------------
def test_class_balanced_sampler_quota_and_hard_fraction():
    # class 0: 100 rows (40 hard), class 1: 30 rows (all hard), class 2: 5 rows (< min_pixels)
    labels = torch.cat([torch.zeros(100), torch.ones(30), torch.full((5,), 2), torch.full((7,), IGN)]).long()
    hard = torch.cat([torch.arange(100) < 40, torch.ones(30, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)])
    s = class_balanced(labels, hard, num_classes=3, max_anchors=100, max_per_class=40, min_pixels=8, hard_ratio=0.25,
                       generator=torch.Generator().manual_seed(0))
    assert s.anchors_per_class == [40, 30, 0]  # quota min(40, 100 // 2); class 1 has only 30
    assert s.hard_per_class == [10, 30, 0]  # 0.25 · 40 hard; class 1 tops up with hard rows
    assert len(set(s.index.tolist())) == s.index.numel()  # no row twice
    assert (labels[s.index] != IGN).all()
    assert torch.equal(hard[s.index], s.hard)
    # hard ones really are hard, per class
    picked = labels[s.index]
    assert int((s.hard & (picked == 0)).sum()) == 10


def test_class_balanced_total_budget():
    labels = torch.arange(8).repeat_interleave(50)
    s = class_balanced(labels, torch.zeros(400, dtype=torch.bool), 8, max_anchors=64, max_per_class=100,
                       min_pixels=1, hard_ratio=0.5)
    assert s.anchors_per_class == [8] * 8 and s.index.numel() == 64
    assert s.hard_per_class == [0] * 8  # no hard rows to give


def test_image_sampler_hardness_from_the_students_classifier():
    labels = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.7, 0.3], [0.02, 0.98]])
    hard = ImageSampler(2, hard_confidence=0.9).hardness(labels, probs)
    assert hard.tolist() == [False, True, True, False]  # unsure, wrong, confident-right


def test_video_sampler_hardness_is_temporal_instability():
    vs = VideoSampler(3)
    pred, prev = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1])
    valid = torch.tensor([True, True, True, False])
    assert vs.hardness(pred, prev, valid).tolist() == [False, True, False, False]
    idx = VideoSampler(3, max_contrast=6).contrast(torch.tensor([0] * 10 + [1] * 10 + [IGN] * 3))
    assert idx.numel() == 4  # 6 // 3 per class, two classes present


# -- views ------------------------------------------------------------------------------------
def _coordinate_image(H, W):
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return torch.stack([ys, xs, ys * W + xs]).unsqueeze(0)


def test_overlap_cells_line_up_with_a_known_shift():
    """A stride-4 translation-equivariant feature map (4×4 average pooling) of two crops must give
    identical vectors on the overlap cells: the same image content."""
    H, W, s = 32, 48, 4
    img = _coordinate_image(H, W)
    a, b = Box(4, 8, 16, 24), Box(12, 16, 16, 24)  # b is a shifted by (8, 8) pixels = (2, 2) cells
    fa = F.avg_pool2d(img[..., a.y:a.y + a.h, a.x:a.x + a.w], s)
    fb = F.avg_pool2d(img[..., b.y:b.y + b.h, b.x:b.x + b.w], s)
    sa, sb = overlap_cells(a, b, s)
    assert (sa[0].start, sa[1].start, sb[0].start, sb[1].start) == (2, 2, 0, 0)
    assert torch.equal(fa[..., sa[0], sa[1]], fb[..., sb[0], sb[1]])
    # and the whole-image map cut to a box equals the crop's own map (student_teacher views)
    full = F.avg_pool2d(img, s)
    ys, xs = a.cells(s)
    assert torch.equal(full[..., ys, xs], fa)


def test_sample_view_pair_is_aligned_and_respects_iou():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a, b = sample_view_pair(96, 192, 48, 96, 4, (0.1, 0.6), g)
        assert all(v % 4 == 0 for v in (a.y, a.x, b.y, b.x))
        assert 0.1 <= box_iou(a, b) <= 0.6
        assert a.y + a.h <= 96 and b.x + b.w <= 192
    with pytest.raises(ValueError, match="stride"):
        sample_view_pair(96, 192, 50, 96, 4)


def naive_pool(labels, s, K):
    B, H, W = labels.shape
    h, w = -(-H // s), -(-W // s)  # a partial last cell where the size is not a multiple of s
    out = torch.zeros(B, h, w, dtype=torch.long)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                cell = labels[b, i * s:(i + 1) * s, j * s:(j + 1) * s].reshape(-1).tolist()
                counts = {v: cell.count(v) for v in set(cell)}
                best = max(counts.values())
                winners = sorted(v for v, c in counts.items() if c == best)  # lower id first, 255 last
                out[b, i, j] = winners[0]
    return out


def test_pool_labels_majority_with_ignore():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 8, 12), generator=g)
    labels[labels == 3] = IGN
    assert torch.equal(pool_labels(labels, 4, 3), naive_pool(labels, 4, 3))
    lab = torch.full((1, 4, 4), IGN)
    lab[0, 0, :3] = 1
    assert pool_labels(lab, 4, 3).item() == IGN  # mostly ignored stays ignored


def test_pool_labels_random_maps_partial_cells_and_dtypes():
    """Against the per-cell loop on random maps with ties, out-of-range ids and a size that is not a
    multiple of the stride (partial last cells), for int64 and uint8 labels."""
    g = torch.Generator().manual_seed(3)
    for shape, K in (((3, 13, 22), 5), ((2, 16, 16), 2), ((1, 9, 7), 8)):
        labels = torch.randint(0, K + 2, shape, generator=g)  # K, K + 1: out of range, counted as ignored
        labels[torch.rand(shape, generator=g) < 0.2] = IGN
        want = naive_pool(torch.where(labels >= K, IGN, labels), 4, K)
        assert torch.equal(pool_labels(labels, 4, K), want)
        assert torch.equal(pool_labels(labels.to(torch.uint8), 4, K), want)


def test_warp_backward_with_a_constant_flow():
    """Frame τ shows at u what frame τ-1 showed at u + (2, -1) cells: warping τ-1 gives τ."""
    prev = torch.arange(6 * 8, dtype=torch.float32).view(1, 1, 6, 8)
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    warped, inb = warp_backward(prev, flow)
    for y in range(6):
        for x in range(8):
            py, px = y - 1, x + 2
            assert bool(inb[0, y, x]) == (0 <= py < 6 and 0 <= px < 8)
            if inb[0, y, x]:
                assert warped[0, 0, y, x].item() == pytest.approx(prev[0, 0, py, px].item())
    # pixel flow -> cell flow: a 4-pixel shift is one stride-4 cell
    fc, fv = flow_to_cells(torch.full((1, 2, 8, 8), 4.0), torch.ones(1, 8, 8, dtype=torch.bool), 4)
    assert torch.allclose(fc, torch.ones(1, 2, 2, 2)) and fv.all()


def test_sample_boxes_are_stride_aligned_inside_and_uniform():
    """Every admissible corner (13 x 25 of them for a 48x96 crop of 96x192 on stride 4) comes up
    about equally often: the counts of 32,500 draws stay within a binomial band of the mean 100."""
    from pipa.contrast import sample_boxes

    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(32_500, 96, 192, 48, 96, 4, g)
    counts = torch.zeros(13, 25)
    for b in boxes:
        assert b.y % 4 == 0 and b.x % 4 == 0 and (b.h, b.w) == (48, 96)
        assert 0 <= b.y <= 96 - 48 and 0 <= b.x <= 192 - 96
        counts[b.y // 4, b.x // 4] += 1
    assert counts.min() >= 55 and counts.max() <= 150  # mean 100, sd ~10: far outside is a biased draw
    with pytest.raises(ValueError, match="multiple of the feature stride"):
        sample_boxes(1, 96, 192, 50, 96, 4, g)
