"""Data throughput of the rare-class-sampled source stream (a benchmark, not a test).

    PYTHONPATH=src python scripts/bench_data.py [--images 24] [--workers 0,1,2] [--batches 12]

Fabricates a GTA5-format tree at the real frame size (1914x1052, ``pipa.data.fabricate``), builds
the stream exactly as ``gta2cs_daformer`` does (resize to 1280x720, 512x512 crops with
cat_max_ratio 0.75, rare class sampling with the re-crop rule, batch 2) and prints images/s for each
``data.num_workers``, their ratio to 0 workers, and whether a stream resumed half-way gives the
same batches as the uninterrupted one. Compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.config import load_config  # noqa: E402
from pipa.data import fabricate  # noqa: E402
from pipa.data.datasets import build_dataset  # noqa: E402
from pipa.engine.streams import BatchStream  # noqa: E402
from pipa.uda.rcs import RareClassSampler, class_pixel_counts  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs" / "gta2cs_daformer.yaml"


def stream(ds, rcs, workers: int, offset: int = 0) -> BatchStream:
    return BatchStream(ds, 2, 7, 0, 1, num_workers=workers, offset=offset, rcs=rcs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per worker count (after 2 warm-up)")
    ap.add_argument("--root", default=None, help="an existing GTA5-format tree (default: fabricate one)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.root) if args.root else fabricate.gta5(Path(tmp.name) / "gta", args.images)
    cfg = load_config(PRESET, [f"data.source.root={root}", f"data.cache_dir={tmp.name}/cache"])
    ds = build_dataset(cfg.data.source, cfg.model.num_classes, cfg.data.cache_dir, labelled=True)
    r = cfg.method.rcs
    rcs = RareClassSampler(class_pixel_counts(ds, cfg.model.num_classes), r.temperature, r.min_pixels, r.min_crop_ratio)

    rows, base = [], None
    for w in [int(x) for x in args.workers.split(",")]:
        s = stream(ds, rcs, w)
        for _ in range(2):  # warm-up: worker start-up and first prefetch
            next(s)
        times = []
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(s)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
        ips = 2 * args.batches / sum(times)
        base = base or ips
        rows.append((w, ips, ips / base, statistics.median(times) * 1000))
    # resume: batches 4..7 of a fresh stream == batches 4..7 of one resumed at 4 (with workers)
    full = stream(ds, rcs, 0)
    ref = [next(full) for _ in range(8)][4:]
    resumed = stream(ds, rcs, max(int(x) for x in args.workers.split(",")), offset=4)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(ref, [next(resumed) for _ in range(4)]) for k in a)

    print(f"GTA5-format stream, {len(ds)} fabricated 1914x1052 frames, resize 1280x720, crop 512, RCS, batch 2, "
          f"{torch.get_num_threads()} torch thread(s) in the main process")
    print("| data.num_workers | images/s | vs 0 workers | median ms/batch |")
    print("|---|---|---|---|")
    for w, ips, ratio, ms in rows:
        print(f"| {w} | {ips:.2f} | {ratio:.2f}x | {ms:.0f} |")
    print(f"resume at batch 4 with {max(int(x) for x in args.workers.split(','))} workers gives the same batches: {same}")


if __name__ == "__main__":
    main()
