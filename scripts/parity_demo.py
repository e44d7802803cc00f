"""The CPU demo preset with its own settings vs. the reference recipes' settings (docs/parity.md):
colour jitter (probability 0.8, kornia's operations), no weight decay on norms, MIC blocks filled
with the mean colour, the classifier initialised N(0, 0.01). Same seeds, same everything else; one table of target mIoU.

    PYTHONPATH=src python scripts/parity_demo.py --seeds 3 --methods self_training mic --out runs/parity_demo

Finished runs are reused (their result.json), so a stopped run continues where it was.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipa.config import load_config
from pipa.engine.trainer import train

PRESET = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs" / "synthetic.yaml"
SETTINGS = {
    "demo": [],
    "reference": ["method.aug.jitter_p=0.8", "method.aug.jitter_ops=reference", "optim.decay_norms=false",
                  "method.mic.fill=mean", "model.classifier_init_std=0.01"],
}


def run(method: str, setting: str, seed: int, out: Path) -> float:
    folder = out / setting / method / f"seed{seed}"
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())["miou"]
    cfg = load_config(PRESET, [f"method.name={method}", f"train.seed={seed}", f"train.out_dir={folder}",
                               "train.overwrite=true", *SETTINGS[setting]])
    miou = train(cfg, progress="none").miou
    done.write_text(json.dumps({"miou": miou}))
    return miou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["self_training", "mic"])
    ap.add_argument("--out", default="runs/parity_demo")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for method in args.methods:
        res = {s: [run(method, s, seed, out) for seed in range(args.seeds)] for s in SETTINGS}
        rows.append((method, res))
        print(f"{method}: " + "; ".join(f"{s} {[round(v, 2) for v in vs]}" for s, vs in res.items()), flush=True)
    print("\n| method | demo settings | reference settings | reference − demo (per seed) |\n|---|---|---|---|")
    for method, res in rows:
        d, r = res["demo"], res["reference"]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        diff = ", ".join(f"{b - a:+.1f}" for a, b in zip(d, r))
        print(f"| {method} | {statistics.mean(d):.1f} ± {sd(d):.1f} | {statistics.mean(r):.1f} ± {sd(r):.1f} | {diff} |")


if __name__ == "__main__":
    main()
