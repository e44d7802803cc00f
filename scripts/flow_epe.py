"""End-point error of pipa's flow estimators against the built-in benchmark's exact flow.

    PYTHONPATH=src python scripts/flow_epe.py [--clips 8] [--split val]

Renders target-domain ego-motion clips (4 frames, 96x192, exact backward flow and visibility),
estimates the flow t -> t-1 with each method and prints the mean end-point error over visible
pixels (and that of a zero flow, for scale) and the time per frame pair.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.data.flow import METHODS, estimate_flow  # noqa: E402
from pipa.data.synthetic import SyntheticScenes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    scenes = SyntheticScenes("target", args.split, 96, 192, 0)
    errs: dict[str, list[float]] = {m: [] for m in ("zero", *METHODS)}
    secs: dict[str, float] = {m: 0.0 for m in METHODS}
    pairs = 0
    for c in range(args.clips):
        clip = scenes.render_clip(100_000 + c, 4)
        for t in range(1, 4):
            vis, gt = clip.valid[t], clip.flow[t]
            errs["zero"].append(float(np.linalg.norm(gt, axis=-1)[vis].mean()))
            for m in METHODS:
                t0 = time.perf_counter()
                est = estimate_flow(clip.frames[t], clip.frames[t - 1], m)
                secs[m] += time.perf_counter() - t0
                errs[m].append(float(np.linalg.norm(est - gt, axis=-1)[vis].mean()))
            pairs += 1
    print(f"{pairs} frame pairs of {args.clips} synthetic target clips (96x192), EPE over visible pixels")
    print("| method | mean EPE (px) | ms per pair |")
    print("|---|---|---|")
    for m, v in errs.items():
        ms = f"{secs[m] / pairs * 1000:.1f}" if m in secs else "–"
        print(f"| {m} | {np.mean(v):.2f} | {ms} |")


if __name__ == "__main__":
    main()
