"""Time one training step of each method on the CPU preset (a benchmark, not a test).

    PYTHONPATH=src python scripts/bench_step.py [--methods source_only,self_training] [--steps 20]

Prints a Markdown table: mean step time (forward + backward + optimiser + EMA), its ratio to the
first method, and a breakdown of the self-training step by phase (cProfile-free: timers around
each call). Run it on an idle machine and compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.config import load_config  # noqa: E402
from pipa.methods import build_method  # noqa: E402
from pipa.models import build_segmentor  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs" / "synthetic.yaml"


def make_batch(cfg, seed: int = 0) -> dict:
    from pipa.data.synthetic import SyntheticScenes

    B, H, W = cfg.data.batch_size, cfg.data.source.height, cfg.data.source.width
    src = SyntheticScenes("source", "train", H, W, 0)
    tgt = SyntheticScenes("target", "train", H, W, 0)
    s = [src.render_image(seed + i) for i in range(B)]
    t = [tgt.render_image(seed + i) for i in range(B)]

    def img(xs):
        return torch.stack([torch.from_numpy(x[0]).permute(2, 0, 1).float() / 255 for x in xs])

    return {"source": {"image": img(s), "label": torch.stack([torch.from_numpy(x[1]).long() for x in s])},
            "target": {"image": img(t)}}


def timed_steps(method, opt, batch: dict, steps: int, warmup: int = 3) -> list[float]:
    """Seconds of each full training step (forward, backward, optimiser, EMA) after ``warmup``."""
    times = []
    for it in range(warmup + steps):
        t0 = time.perf_counter()
        loss, _ = method.step(batch, it)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(it)
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def iq_mean(xs: list[float]) -> float:
    """Interquartile mean (robust to the odd slow step of a shared machine)."""
    xs = sorted(xs)
    mid = xs[len(xs) // 4: len(xs) * 3 // 4 + 1]
    return sum(mid) / len(mid)


def time_method(name: str, steps: int, overrides: list[str], warmup: int = 3) -> float:
    cfg = load_config(PRESET, [f"method.name={name}", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, build_segmentor(cfg.model))
    method.train()
    groups = method.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult)
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    return iq_mean(timed_steps(method, opt, make_batch(cfg), steps, warmup))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="source_only,self_training,daformer,mic")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--overrides", nargs="*", default=[], help="config key=value overrides (e.g. model.backbone=mit_tiny)")
    args = ap.parse_args()
    names = args.methods.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU preset (batch 8+8, 96x192) "
          f"{' '.join(args.overrides)}\n")
    print("| method | step (ms, interquartile mean) | ratio to first |")
    print("|---|---|---|")
    first = None
    for n in names:
        t = time_method(n, args.steps, args.overrides)
        first = first or t
        print(f"| {n} | {t * 1000:.0f} | {t / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
