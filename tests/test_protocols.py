"""Evaluation protocols: class subsets as the papers report them, sliding-window inference."""

import math

import pytest
import torch

from pipa.config import EvalConfig
from pipa.evaluation.evaluate import evaluate
from pipa.evaluation.metrics import iou_from_confusion, mean_iou
from pipa.evaluation.protocols import CS19_IN_13, CS19_IN_16, SEQ12_IN_11, slide_logits, subsets
from pipa.models.segmentor import SegOutput


def test_subsets_by_protocol():
    assert subsets("syn2cs", 19)[0] == ("mIoU16 (19-way head, mean of 16 of its 19 IoUs)", CS19_IN_16)
    assert [9, 14, 16] == sorted(set(range(19)) - set(CS19_IN_16))  # terrain, truck, train
    assert sorted(set(CS19_IN_16) - set(CS19_IN_13)) == [3, 4, 5]  # wall, fence, pole
    assert SEQ12_IN_11 == [i for i in range(12) if i != 3]  # fence trained, not evaluated
    with pytest.raises(ValueError, match="15"):
        subsets("viper2csseq", 19)


def test_miou16_of_a_19_way_head_is_the_daformer_rescaling():
    """With IoU 0 for terrain/truck/train, mean over the 16 = mIoU19 · 19/16 (DAFormer's formula)."""
    g = torch.Generator().manual_seed(0)
    cm = torch.randint(1, 50, (19, 19), generator=g)
    for c in (9, 14, 16):
        cm[c, c] = 0  # never predicted right
    m19 = mean_iou(cm)
    m16 = mean_iou(cm, CS19_IN_16)
    iou = iou_from_confusion(cm)
    assert all(iou[c] == 0 for c in (9, 14, 16))
    assert m16 == pytest.approx(m19 * 19 / 16)


class _Window(torch.nn.Module):
    """A context-dependent 'model': every logit is the mean of its input window (channel 0)."""

    def forward(self, x):
        m = x[:, :1].mean((2, 3), keepdim=True).expand(-1, 2, *x.shape[-2:]).clone()
        m[:, 1] = 0.5
        return SegOutput(m, x)


def test_slide_logits_average_overlapping_windows():
    x = torch.arange(1 * 3 * 4 * 10, dtype=torch.float32).view(1, 3, 4, 10)
    out = slide_logits(_Window(), x, crop=(4, 6), stride=(4, 3))
    # windows start at x = 0, 3 and 4 (the last one flush with the border)
    means = {s: float(x[0, 0, :, s:s + 6].mean()) for s in (0, 3, 4)}
    for col in range(10):
        covering = [s for s in means if s <= col < s + 6]
        expected = sum(means[s] for s in covering) / len(covering)
        assert out[0, 0, 0, col].item() == pytest.approx(expected)


class _Pointwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return SegOutput(self.conv(x), x)


def test_evaluate_slide_equals_whole_for_a_pointwise_model_and_reports_subsets():
    torch.manual_seed(0)
    model = _Pointwise()
    data = [{"image": torch.rand(3, 8, 12), "label": torch.randint(0, 4, (8, 12))} for _ in range(3)]
    whole = evaluate(model, data, 4, torch.device("cpu"), 2)
    slide = evaluate(model, data, 4, torch.device("cpu"), 2, protocol=EvalConfig(mode="slide", crop=[4, 8], stride=[2, 3]))
    assert torch.equal(whole.confusion, slide.confusion)
    assert list(slide.subsets) == ["mIoU4"] and slide.miou == pytest.approx(whole.miou)
    # input resize: the prediction is brought back to the label grid
    small = evaluate(model, data, 4, torch.device("cpu"), 2, protocol=EvalConfig(input_size=[4, 6]))
    assert small.confusion.sum() == 3 * 8 * 12 and not math.isnan(small.miou)
