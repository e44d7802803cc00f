"""ONNX export of a trained run against ``pipa predict`` (a check that prints a table, not a test).

    PYTHONPATH=src python scripts/check_onnx.py RUN [--sizes 96x192 144x288] [--out runs/onnx_check]

Exports RUN's student with ``pipa export --onnx``, writes the validation images of RUN's config
as PNGs at each size, segments them with ``pipa predict`` and with the ONNX graph under
onnxruntime (CPU), and prints the share of pixels whose class agrees, per size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.cli import main as pipa  # noqa: E402
from pipa.config import load_config  # noqa: E402
from pipa.data.datasets import build_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a training run folder (config.yaml + checkpoint.pt)")
    ap.add_argument("--sizes", nargs="*", default=["96x192", "144x288"], help="HxW input sizes")
    ap.add_argument("--out", default="runs/onnx_check")
    args = ap.parse_args()
    import onnxruntime

    run, out = Path(args.run), Path(args.out)
    export = out / "export"
    assert pipa(["export", str(run), "--out", str(export), "--onnx", "--overwrite", "--example-size", "96", "192"]) == 0
    cfg = load_config(run / "config.yaml")
    val = build_dataset(cfg.data.val, cfg.model.num_classes)
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    print(f"\n{run}: {len(val)} validation images, onnxruntime {onnxruntime.__version__}\n")
    print("| input size | pixels | same class as pipa predict | onnxruntime s/image |\n|---|---|---|---|")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        folder = out / f"val_{h}x{w}"
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i in range(len(val)):
            rgb = (val[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            im = Image.fromarray(rgb)
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            im.save(folder / f"v{i:04d}.png")
            images.append(np.asarray(im))
        pred = out / f"pred_{h}x{w}"
        assert pipa(["predict", str(export), str(folder), "--out", str(pred), "--no-color", "--no-overlay"]) == 0
        same = total = 0
        t0 = time.perf_counter()
        for i in range(0, len(images), 8):
            x = np.stack(images[i:i + 8]).transpose(0, 3, 1, 2).astype(np.float32) / 255
            (logits,) = session.run(["logits"], {"images": x})
            want = np.stack([np.asarray(Image.open(pred / f"v{j:04d}_labels.png")) for j in range(i, i + len(x))])
            same += int((logits.argmax(1) == want).sum())
            total += want.size
        secs = (time.perf_counter() - t0) / len(images)
        print(f"| {h}x{w} | {total} | {100 * same / total:.4f} % | {secs:.4f} |", flush=True)


if __name__ == "__main__":
    main()
