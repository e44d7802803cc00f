"""A short training run of a real preset on fabricated datasets at the published frame sizes (no
downloads): the loaders, rare class sampling in DataLoader workers, the full step and the evaluation
protocol, timed end to end.

    PYTHONPATH=src python scripts/real_size_run.py gta2cs_pipa --iterations 30 train.amp=bf16 data.num_workers=8

Prints the loop's seconds per iteration (``train_seconds / iterations``, the first iterations'
warm-up included), the wall time of the whole run (indexing and the final evaluation included) and
the final mIoU (meaningless on random data and weights: it only shows the evaluation ran).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.config import load_config  # noqa: E402
from pipa.data import fabricate  # noqa: E402
from pipa.engine.trainer import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--source-images", type=int, default=12)
    ap.add_argument("--target-images", type=int, default=8)
    ap.add_argument("--val-images", type=int, default=2)
    ap.add_argument("--root", default=None, help="where to fabricate the trees (default: a temporary folder)")
    args = ap.parse_intermixed_args()

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.root or tmp.name)
    t0 = time.perf_counter()
    source = "synthia" if args.preset.startswith("syn") else "gta"
    if source == "gta":
        fabricate.gta5(root / "gta", args.source_images)
    else:
        fabricate.synthia(root / "synthia", args.source_images)
    fabricate.cityscapes(root / "cityscapes", args.target_images, split="train")
    fabricate.cityscapes(root / "cityscapes", args.val_images, split="val", seed=5)
    made = time.perf_counter() - t0
    cfg = load_config(CONFIGS / f"{args.preset}.yaml", [
        f"data.source.root={root / source}", f"data.target.root={root / 'cityscapes'}",
        f"data.val.root={root / 'cityscapes'}", "model.pretrained=null", f"train.iterations={args.iterations}",
        "train.eval_interval=0", "train.checkpoint_interval=0", "train.log_interval=10",
        f"train.out_dir={root / 'run'}", f"data.cache_dir={root / 'cache'}", "train.overwrite=true", *args.overrides])
    t1 = time.perf_counter()
    res = train(cfg, progress="log")
    wall = time.perf_counter() - t1
    print(f"{args.preset}: {args.iterations} iterations on fabricated {source} -> cityscapes at real frame sizes "
          f"({cfg.train.amp}, {cfg.data.num_workers} workers): {res.train_seconds / args.iterations * 1000:.0f} ms per "
          f"iteration (loop, warm-up included); whole run {wall:.1f} s (indexing, final evaluation on "
          f"{args.val_images} val images included); fabricating the trees {made:.1f} s; final mIoU {res.miou:.2f} "
          "(random data)", flush=True)


if __name__ == "__main__":
    main()
