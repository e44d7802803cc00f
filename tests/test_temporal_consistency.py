"""Temporal consistency (``evaluation/temporal.py``, ``pipa eval --json``, the demo's video table)
against hand-built cases."""

import json
import math

import torch

from conftest import PRESET, tiny_overrides
from pipa.core.constants import IGNORE_INDEX as IGN
from pipa.evaluation.temporal import ConsistencyMeter


def test_agreement_under_a_known_shift_counted_by_hand():
    """Frame t shows frame t-1 two pixels to the right (flow u = +2). A prediction that moved with
    the scene agrees everywhere the source is in bounds; changing 3 of those pixels of class 1
    costs exactly 3 agreements, all in class 1's row."""
    prev = torch.randint(0, 3, (1, 4, 10), generator=torch.Generator().manual_seed(0))
    cur = torch.zeros_like(prev)
    cur[..., :8] = prev[..., 2:]  # p shows prev at p + 2
    flow = torch.zeros(1, 2, 4, 10)
    flow[:, 0] = 2.0
    labels = torch.ones(1, 4, 10, dtype=torch.long)
    labels[0, 0] = 2
    labels[0, 3, 0] = IGN
    m = ConsistencyMeter(3, torch.device("cpu"))
    m.update(cur, prev, flow, None, labels)
    compared = 4 * 8 - 1  # columns 8 and 9 look outside frame t-1; one pixel ignored
    assert float(m.total.sum()) == compared and float(m.agree.sum()) == compared
    cur2 = cur.clone()
    cur2[0, 1, 0:3] = (cur2[0, 1, 0:3] + 1) % 3  # three pixels of class 1 flip
    m2 = ConsistencyMeter(3, torch.device("cpu"))
    m2.update(cur2, prev, flow, torch.ones(1, 4, 10, dtype=torch.bool), labels)
    overall, per = m2.result()
    assert math.isclose(overall, 100 * (compared - 3) / compared)
    assert math.isnan(per[0]) and math.isclose(per[2], 100.0) and math.isclose(per[1], 100 * (23 - 3) / 23)


def test_eval_reports_temporal_consistency_on_clips(tmp_path, capsys):
    """On the synthetic clips (exact flow) ``pipa eval --json`` reports it; a model that predicts one
    class everywhere is perfectly consistent."""
    from pipa.cli import main
    from pipa.config import load_config
    from pipa.data.datasets import build_dataset
    from pipa.evaluation.evaluate import evaluate
    from pipa.models import build_segmentor

    cfg = load_config(PRESET.parent / "synthetic_video.yaml", tiny_overrides(tmp_path / "run", iterations=1))
    model = build_segmentor(cfg.model)
    torch.nn.init.zeros_(model.classifier.weight)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.arange(8.0))  # class 7 everywhere
    val = build_dataset(cfg.data.val, 8, cfg.data.cache_dir)
    res = evaluate(model, val, 8, torch.device("cpu"), 4)
    assert res.temporal_consistency == 100.0
    model.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "config.yaml").write_text((PRESET.parent / "synthetic_video.yaml").read_text())
    args = ["eval", str(tmp_path / "w"), *[o for o in tiny_overrides(tmp_path / "run", iterations=1)
                                           if o.startswith("data.val")], "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["temporal_consistency"] == 100.0 and len(out["temporal_consistency_per_class"]) == 8


def test_synthetic_clips_with_estimated_or_no_flow(tmp_path):
    """``synthetic_flow=dis``: DIS flow of each frame to its predecessor, within a few pixels of the
    renderer's exact flow on average (README: 3.9 px over the benchmark); ``none``: no flow keys."""
    from pipa.data.datasets import SyntheticDataset

    exact = SyntheticDataset("target", "train", 24, 96, 192, 0, 4, tmp_path)
    dis = SyntheticDataset("target", "train", 24, 96, 192, 0, 4, tmp_path, flow="dis")
    none = SyntheticDataset("target", "train", 24, 96, 192, 0, 4, tmp_path, flow="none")
    assert torch.equal(dis[5]["image"], exact[5]["image"]) and dis[5]["flow_valid"].all()
    epe = (dis.flow[:, 1:] - exact.flow[:, 1:]).norm(dim=2)[exact.valid[:, 1:]].mean()
    zero = exact.flow[:, 1:].norm(dim=2)[exact.valid[:, 1:]].mean()
    assert float(epe) < 0.75 * float(zero)  # much better than assuming no motion
    assert "flow" not in none[5] and "prev_image" in none[5]


def test_demo_video_rows_with_estimated_and_without_flow():
    from pathlib import Path

    from pipa.demo import DemoOptions, run_config

    opts = DemoOptions(out=Path("/tmp/unused"))
    for row, kind in (("pipa", "exact"), ("pipa_dis_flow", "dis"), ("pipa_no_flow", "none")):
        cfg = run_config("video", row, 0, opts)
        assert cfg.method.name == "pipa_video" and cfg.data.target.synthetic_flow == kind
        assert cfg.data.val.synthetic_flow == "exact"  # consistency is measured against the exact flow
