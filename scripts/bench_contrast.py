"""Cost of the PiPa++ terms on the CPU preset (a benchmark, not a test).

    PYTHONPATH=src python scripts/bench_contrast.py [--steps 10] [--rounds 5] [--threads N] [--overrides key=value ...]

Prints three Markdown tables, all from this one run (compare ratios within a run only; run it on
an otherwise idle machine):
1. the training step (forward + backward + optimiser + EMA) of ``self_training`` and ``pipa`` on
   image batches, and of ``self_training`` and ``pipa_video`` on clip batches, with the ratios. Each
   pair is timed in alternating rounds (the order flips every round) and the ratio is the median
   of the rounds' ratios, with their range: a slow spell of a shared machine hits both methods;
2. the contrastive part alone: sampling + projection heads + losses (forward and backward, down
   to the decoder features) + memory read/push, its share of the pipa step and its peak memory
   (tensor allocations recorded by the PyTorch profiler). Network passes that a term needs (the
   patch crop through the student, the teacher on the previous frame) are not part of it: they
   are in the step times of table 1;
3. how ``PixelContrastLoss`` (forward + backward) grows with the number of anchors and memory
   entries, with its peak memory (chunks of 1024 anchors, recomputed in backward).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipa.config import load_config  # noqa: E402
from pipa.contrast import PixelContrastLoss  # noqa: E402
from pipa.data.datasets import SyntheticDataset  # noqa: E402
from pipa.methods import build_method  # noqa: E402
from pipa.models import build_segmentor  # noqa: E402
from bench_step import iq_mean, timed_steps  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs" / "synthetic.yaml"


def make_batch(cfg, clips: bool) -> dict:
    B, H, W = cfg.data.batch_size, cfg.data.source.height, cfg.data.source.width
    T = 4 if clips else 1

    def stack(domain: str, labelled: bool) -> dict:
        ds = SyntheticDataset(domain, "train", B, H, W, 0, T, labelled=labelled)
        items = [ds[i] for i in range(B)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    return {"source": stack("source", True), "target": stack("target", False)}


def build(name: str, overrides: list[str]):
    cfg = load_config(PRESET, [f"method.name={name}", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, build_segmentor(cfg.model))
    method.train()
    opt = torch.optim.AdamW(method.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult), lr=cfg.optim.lr)
    return cfg, method, opt


class Stepper:
    """A method training on one fixed batch; ``run(n)`` times n more full steps (the iteration
    count goes on, so the memory and the EMA keep evolving as in training)."""

    def __init__(self, name: str, clips: bool, overrides: list[str], warmup: int) -> None:
        """Warm-up steps first: the memory fills and the teacher becomes confident, as in training."""
        self.cfg, self.method, self.opt = build(name, overrides)
        self.batch = make_batch(self.cfg, clips)
        self.it = 0
        self.run(warmup)

    def run(self, n: int) -> list[float]:
        times = timed_steps(self.method, self.opt, self.batch, n, 0) if n else []
        self.it += n
        return times


def paired_times(base: str, other: str, clips: bool, steps: int, rounds: int, overrides: list[str],
                 warmup: int) -> tuple[float, float, list[float], Stepper]:
    """Step seconds of ``base`` and ``other`` timed in alternating rounds of ``steps`` steps each
    (the order flips every round), so a slow spell of a shared machine hits both: (median base step,
    median other step, the per-round ratios other/base, the other's stepper)."""
    a, b = Stepper(base, clips, overrides, warmup), Stepper(other, clips, overrides, warmup)
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            xb = iq_mean(b.run(steps))
            xa = iq_mean(a.run(steps))
        else:
            xa = iq_mean(a.run(steps))
            xb = iq_mean(b.run(steps))
        ta.append(xa)
        tb.append(xb)
        ratios.append(xb / xa)
    return statistics.median(ta), statistics.median(tb), ratios, b


def peak_bytes(fn) -> int:
    """Peak bytes of tensors allocated while ``fn`` runs, from the profiler's records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda x: x[0])
    cur = best = 0
    for _, m in events:
        cur += m
        best = max(best, cur)
    return best


def contrastive_part(method, batch, clips: bool, steps: int) -> tuple[float, int]:
    """Time and peak memory of sampling + heads + losses (fwd + bwd) + memory, on the features of
    the last real step (detached into leaves, so no segmentor pass is timed)."""
    ctx0, _, _ = method.recipe(batch, 10_000, method.model, method.student)
    terms = method.terms
    views = terms["patch_contrast"].views(ctx0) if "patch_contrast" in terms else None
    tin = terms["temporal_contrast"].inputs(ctx0) if clips and "temporal_contrast" in terms else None

    def leaf(x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone().requires_grad_()

    def once() -> None:
        ctx = dataclasses.replace(ctx0, out_source=dataclasses.replace(ctx0.out_source, features=leaf(ctx0.out_source.features)),
                                  out_mixed=dataclasses.replace(ctx0.out_mixed, features=leaf(ctx0.out_mixed.features)),
                                  _cache={})
        loss, _ = terms["pixel_contrast"](ctx)
        if views is not None:
            patch, _ = terms["patch_contrast"].contrast(dataclasses.replace(views, m1=leaf(views.m1)), ctx.generator)
            loss = loss + patch
        if tin is not None:
            temporal, _ = terms["temporal_contrast"].contrast(tin, ctx)
            loss = loss + temporal
        loss.backward()
        method.shared["pixel_embedding"].after_terms(ctx)

    for _ in range(3):
        once()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    peak = peak_bytes(once)
    return iq_mean(times), peak


def pixel_scaling(anchors: int, memory: int, dim: int = 64, classes: int = 19, reps: int = 3) -> tuple[float, int]:
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(anchors, dim, generator=g), dim=1)
    m = F.normalize(torch.randn(memory, dim, generator=g), dim=1)
    la, lm = torch.randint(0, classes, (anchors,), generator=g), torch.randint(0, classes, (memory,), generator=g)
    loss_fn = PixelContrastLoss(0.1, chunk_size=1024)

    def once() -> None:
        x = a.clone().requires_grad_()
        loss_fn(x, la, m, lm).backward()

    once()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    seconds = (time.perf_counter() - t0) / reps
    peak = peak_bytes(once)
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="steps per timing round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each pair of methods")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=30, help="steps before timing (memory fills, teacher warms up)")
    ap.add_argument("--anchors", type=int, nargs="*", default=[256, 1024, 4096])
    ap.add_argument("--memory", type=int, nargs="*", default=[0, 4096, 16384])
    ap.add_argument("--overrides", nargs="*", default=[], help="config key=value overrides for every method")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU preset (batch 8+8, 96x192) "
          f"{' '.join(args.overrides)}\n")

    print(f"### 1. Training step ({args.rounds} alternating rounds of {args.steps} steps; ratio: median of the "
          "rounds' ratios, and their range)\n")
    print("| data | method | step (ms) | ratio to self_training | range over rounds |\n|---|---|---|---|---|")
    parts = {}
    for clips, name in ((False, "pipa"), (True, "pipa_video")):
        data = "clips" if clips else "images"
        t_base, t, ratios, other = paired_times("self_training", name, clips, args.steps, args.rounds, args.overrides,
                                                args.warmup)
        print(f"| {data} | self_training | {t_base * 1000:.0f} | 1.00 | |", flush=True)
        print(f"| {data} | {name} | {t * 1000:.0f} | {statistics.median(ratios):.2f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} |", flush=True)
        parts[name] = (t, contrastive_part(other.method, other.batch, clips, args.steps))

    print("\n### 2. Contrastive part alone (sampling + heads + losses fwd/bwd + memory)\n")
    print("| method | contrastive part (ms) | share of the step | peak tensor memory (MiB) |\n|---|---|---|---|")
    for name, (step, (t, peak)) in parts.items():
        print(f"| {name} | {t * 1000:.1f} | {100 * t / step:.0f}% | {peak / 2**20:.1f} |", flush=True)

    print("\n### 3. PixelContrastLoss forward + backward (D = 64, 19 classes, chunks of 1024 anchors)\n")
    print("| anchors | memory entries | time (ms) | peak tensor memory (MiB) | unchunked block (MiB) |\n|---|---|---|---|---|")
    for anchors in args.anchors:
        for memory in args.memory:
            t, peak = pixel_scaling(anchors, memory)
            block = anchors * (anchors + memory) * 4 / 2**20
            print(f"| {anchors} | {memory} | {t * 1000:.1f} | {peak / 2**20:.1f} | {block:.1f} |", flush=True)


if __name__ == "__main__":
    main()
