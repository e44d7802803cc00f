"""One demo row with extra settings, seed by seed (an A/B against the plain demo row).

    PYTHONPATH=src python scripts/ab_demo.py pipa method.pipa.memory.source=teacher --seeds 3 \
        --out runs/ab_memory_teacher [--track image]

Builds each run exactly as ``pipa demo`` does (``pipa.demo.run_config``), adds the overrides, and
prints the target mIoU per seed and their mean ± std. Finished runs are reused (their result.json),
so a stopped comparison continues where it was. Compare with the plain row of a ``pipa demo`` run
with the same seeds (its ``results.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.demo import DemoOptions, run_config  # noqa: E402
from pipa.engine.trainer import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row", help="a demo row: self_training, pipa, mic, daformer+pipa, ...")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--track", default="image", choices=["image", "video"])
    ap.add_argument("--out", required=True)
    args = ap.parse_intermixed_args()
    out = Path(args.out)
    mious = []
    for seed in range(args.seeds):
        folder = out / args.track / args.row / f"seed{seed}"
        done = folder / "result.json"
        if done.is_file():
            mious.append(json.loads(done.read_text())["miou"])
            continue
        cfg = run_config(args.track, args.row, seed, DemoOptions(out=out), (f"train.out_dir={folder}", *args.overrides))
        res = train(cfg, progress="none")
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"miou": res.miou, "per_class_iou": res.per_class_iou, "overrides": args.overrides}))
        mious.append(res.miou)
        print(f"{args.track} {args.row} {' '.join(args.overrides)} seed {seed}: mIoU {res.miou:.2f}", flush=True)
    sd = statistics.stdev(mious) if len(mious) > 1 else 0.0
    print(f"{args.track} {args.row} {' '.join(args.overrides)}: " + ", ".join(f"{m:.2f}" for m in mious)
          + f"; mean {statistics.mean(mious):.2f} ± {sd:.2f}")


if __name__ == "__main__":
    main()
