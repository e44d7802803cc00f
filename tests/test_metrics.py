import math

import pytest
import torch

from pipa.evaluation.metrics import ConfusionMeter, confusion_matrix, iou_from_confusion, mean_iou


def test_hand_computed_case():
    # gt:   0 0 1 1 255 2      pred: 0 1 1 1 2 0
    gt = torch.tensor([0, 0, 1, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(pred, gt, 4)
    # class 0: tp 1, fp 1 (gt 2 -> 0), fn 1 (gt 0 -> 1): IoU 1/3
    # class 1: tp 2, fp 1, fn 0: IoU 2/3;  class 2: tp 0, fn 1: IoU 0; class 3 absent: NaN
    iou = iou_from_confusion(cm)
    assert iou[0].item() == pytest.approx(1 / 3)
    assert iou[1].item() == pytest.approx(2 / 3)
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_against_naive_loop():
    g = torch.Generator().manual_seed(0)
    K = 5
    meter = ConfusionMeter(K)
    gts, preds = [], []
    for _ in range(3):  # accumulated over several "images", not averaged per image
        gt = torch.randint(0, K, (7, 9), generator=g)
        gt[torch.rand(7, 9, generator=g) < 0.2] = 255
        pred = torch.randint(0, K - 1, (7, 9), generator=g)  # class K-1 never predicted
        meter.update(pred, gt)
        gts.append(gt.flatten()), preds.append(pred.flatten())
    gt, pred = torch.cat(gts), torch.cat(preds)
    ious = []
    for c in range(K):
        valid = gt != 255
        inter = ((gt == c) & (pred == c) & valid).sum().item()
        union = (((gt == c) | (pred == c)) & valid).sum().item()
        if union:
            ious.append(inter / union)
    assert meter.miou() == pytest.approx(sum(ious) / len(ious))


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="label value 7"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 3)


def test_class_argmax_is_the_first_maximal_index():
    """``class_argmax`` (the fast CPU argmax the predictions and samplers use) against a naive loop,
    with ties (integer-valued logits) and along dim 0 and 1."""
    from pipa.core.tensors import class_argmax

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 4, 3, 5), generator=g).float()  # many ties
    got = class_argmax(x)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                vals = [float(x[b, k, i, j]) for k in range(4)]
                assert int(got[b, i, j]) == vals.index(max(vals))
    y = x[0]
    got0 = class_argmax(y, 0)
    for i in range(3):
        for j in range(5):
            vals = [float(y[k, i, j]) for k in range(4)]
            assert int(got0[i, j]) == vals.index(max(vals))
