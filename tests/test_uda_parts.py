import math

import pytest
import torch
from torch import nn

from pipa.uda.adabn import recompute_bn_statistics
from pipa.uda.augment import color_jitter, gaussian_blur, strong_augment
from pipa.uda.fdist import downscale_label_ratio, feature_distance
from pipa.uda.masking import block_mask
from pipa.uda.mixing import classmix, classmix_masks
from pipa.uda.rcs import RareClassSampler, rcs_probabilities
from pipa.uda.teacher import EMATeacher, ema_alpha, pseudo_label, weighted_ce


def test_ema_update_by_hand():
    student = nn.Linear(1, 1, bias=False)
    student.weight.data.fill_(2.0)
    teacher = EMATeacher(student, alpha=0.9)
    assert teacher.ema.weight.item() == 2.0
    student.weight.data.fill_(4.0)
    teacher.update(student, 0)  # α_0 = min(1 - 1/1, 0.9) = 0: plain copy
    assert teacher.ema.weight.item() == pytest.approx(4.0)
    student.weight.data.fill_(0.0)
    teacher.update(student, 1)  # α_1 = min(0.5, 0.9) = 0.5 -> 0.5*4 + 0.5*0
    assert teacher.ema.weight.item() == pytest.approx(2.0)
    teacher.update(student, 100)  # α = 0.9 -> 0.9*2
    assert teacher.ema.weight.item() == pytest.approx(1.8)
    assert ema_alpha(3, 0.999) == pytest.approx(0.75)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_modes_and_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout2d(0.5))
    with torch.no_grad():
        student[1].running_mean.fill_(5.0)  # "source" statistics, far from the batch's
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    t = EMATeacher(student, mode="train_bn")
    y1, y2 = t(x), t(x)
    assert torch.equal(y1, y2)  # dropout off: deterministic
    ref = nn.functional.batch_norm(t.ema[0](x), None, None, t.ema[1].weight, t.ema[1].bias, training=True)
    assert torch.allclose(y1, ref, atol=1e-5)  # batch statistics
    assert torch.all(t.ema[1].running_mean == 5.0)  # the forward did not touch the buffers
    te = EMATeacher(student, mode="eval")
    assert not torch.allclose(te(x), y1, atol=1e-3)  # running statistics differ
    # buffers: copy vs average
    with torch.no_grad():
        student[1].running_mean.fill_(1.0)
    tc = EMATeacher(nn.Sequential(nn.BatchNorm2d(4)), alpha=0.5, buffers="average")
    s2 = nn.Sequential(nn.BatchNorm2d(4))
    s2[0].running_mean.fill_(2.0)
    tc.update(s2, 10)  # 0.5 * 0 + 0.5 * 2
    assert torch.allclose(tc.ema[0].running_mean, torch.full((4,), 1.0))
    tcopy = EMATeacher(nn.Sequential(nn.BatchNorm2d(4)), alpha=0.5, buffers="copy")
    tcopy.update(s2, 10)
    assert torch.allclose(tcopy.ema[0].running_mean, torch.full((4,), 2.0))


def test_pseudo_label_weights_on_constructed_logits():
    # one image, 2 classes, 2x2 pixels: probabilities of class 1 = sigmoid(l1 - l0)
    diff = torch.tensor([[10.0, 10.0], [10.0, 1.0]])  # 3 confident pixels, 1 not (sigmoid(1)=.73)
    logits = torch.stack([torch.zeros(2, 2), diff])[None]
    labels, w, conf = pseudo_label(logits, 0.968, "fraction")
    assert labels.tolist() == [[[1, 1], [1, 1]]]
    assert torch.allclose(w, torch.full((1, 2, 2), 0.75))
    _, wp, _ = pseudo_label(logits, 0.968, "pixel")
    assert wp.tolist() == [[[1.0, 1.0], [1.0, 0.0]]]
    _, wt, _ = pseudo_label(logits, 0.968, "fraction", ignore_top=1)
    assert wt.tolist() == [[[0.0, 0.0], [0.75, 0.75]]]
    assert conf[0, 1, 1].item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-5)


def test_weighted_ce_formula():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    w = torch.tensor([[[0.5, 1.0]]])
    expected = 0.5 * -math.log(math.exp(2) / (math.exp(2) + 1))  # one valid pixel
    assert weighted_ce(logits, labels, w).item() == pytest.approx(expected, rel=1e-6)


def test_classmix_hand_case():
    src_lbl = torch.tensor([[[0, 0, 1, 255], [2, 2, 3, 3]]])  # classes 0..3: 2 are pasted
    src = torch.ones(1, 3, 2, 4)
    tgt = torch.zeros(1, 3, 2, 4)
    pl = torch.full((1, 2, 4), 7)
    q = torch.full((1, 2, 4), 0.25)
    g = torch.Generator().manual_seed(0)
    mask = classmix_masks(src_lbl, generator=g)
    chosen = sorted({int(c) for c in src_lbl[mask].unique()})
    assert len(chosen) == 2  # ceil(4 / 2), never 255
    assert torch.equal(mask, torch.isin(src_lbl, torch.tensor(chosen)))  # whole classes
    img, lbl, w = classmix(mask, src, tgt, src_lbl, pl, q)
    assert torch.equal(img[0, 0], mask[0].float())  # pasted pixels from the source
    assert torch.equal(lbl[mask], src_lbl[mask]) and (lbl[~mask] == 7).all()
    assert (w[mask] == 1).all() and (w[~mask] == 0.25).all()
    for seed in range(20):  # a rare class forced in is always pasted
        m = classmix_masks(src_lbl, torch.tensor([1]), torch.Generator().manual_seed(seed))
        assert m[0, 0, 2] and int(src_lbl[m].unique().numel()) == 2


def test_rcs_probabilities_formula_and_sampling():
    counts = torch.tensor([[90, 10, 0], [90, 0, 0], [80, 0, 30]])
    total = torch.tensor([260.0, 10.0, 30.0])
    f = total / total.sum()
    T = 0.1
    expected = torch.exp((1 - f) / T) / torch.exp((1 - f) / T).sum()
    assert torch.allclose(rcs_probabilities(counts, T).float(), expected, atol=1e-6)
    s = RareClassSampler(counts, T, min_pixels=5)
    idx, classes = s.sample(4000, torch.Generator().manual_seed(0))
    freq = torch.bincount(torch.tensor(classes), minlength=3).float() / 4000
    assert torch.allclose(freq, expected, atol=0.03)
    for i, c in zip(idx, classes):  # the image holds the sampled class
        assert counts[i, c] >= 5


def test_blur_against_naive_kernel():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = gaussian_blur(x, torch.tensor([1.0]))
    r = torch.arange(-3, 4).float()
    k = torch.exp(-0.5 * r**2)
    k = k / k.sum()
    assert torch.allclose(y[0, 0, 4:11, 4:11], torch.outer(k, k), atol=1e-6)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_color_jitter_zero_strength_is_identity():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(color_jitter(x, 0.0), x, atol=1e-5)
    out = strong_augment(x, 1.0, 0.5, 1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)


def test_feature_distance_hand_case():
    # quads: top-left all 1 -> 1; top-right 0,0,0,255 -> 3/4 of 0 -> 0 (255 counts as no class);
    # bottom-left 2,2,1,1 -> no class reaches 0.75 -> 255; bottom-right all 0 -> 0
    lab = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 255], [2, 2, 0, 0], [1, 1, 0, 0]]])
    small = downscale_label_ratio(lab, (2, 2), 0.75, 3)
    assert small.tolist() == [[[1, 0], [255, 0]]]
    f1 = torch.zeros(1, 2, 2, 2)
    f2 = torch.zeros(1, 2, 2, 2)
    f2[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at the class-1 cell
    d = feature_distance(f1, f2, lab, classes=[1], num_classes=3)
    assert d.item() == pytest.approx(5.0)
    assert feature_distance(f1, f2, lab, classes=[2], num_classes=3).item() == 0.0


def test_block_mask_ratio():
    m = block_mask((8, 1, 64, 64), 8, 0.7, torch.Generator().manual_seed(0))
    assert m.shape == (8, 1, 64, 64)
    assert abs(1 - m.mean().item() - 0.7) < 0.08
    blocks = m[:, :, ::8, ::8]
    assert torch.equal(m, blocks.repeat_interleave(8, 2).repeat_interleave(8, 3))  # whole blocks


def test_adabn_matches_dataset_statistics():
    data = [{"image": torch.randn(3, 4, 4) * 2 + torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1)} for _ in range(10)]
    model = nn.Sequential(nn.BatchNorm2d(3))
    n = recompute_bn_statistics(model, data, torch.device("cpu"), batch_size=5)
    allpix = torch.stack([d["image"] for d in data]).permute(1, 0, 2, 3).reshape(3, -1)
    assert n == 10
    assert torch.allclose(model[0].running_mean, allpix.mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="batch-norm"):
        recompute_bn_statistics(nn.Sequential(nn.Conv2d(3, 3, 1)), data, torch.device("cpu"))
