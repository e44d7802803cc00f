"""Fingerprint every method and PiPa++ variant on the built-in benchmark: a short training run per
configuration and a hash of the exported weights (plus the target mIoU). Runs are deterministic,
so two code versions that train identically print identical lines; a refactor that must not change
training is checked by diffing the output of this script before and after it.

    PYTHONPATH=src python scripts/fingerprint_methods.py --out runs/fingerprints > before.txt
    # ... change the code ...
    PYTHONPATH=src python scripts/fingerprint_methods.py --out runs/fingerprints > after.txt
    diff before.txt after.txt

Not part of the test suite (a couple of minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipa.config import load_config
from pipa.engine.trainer import train

PRESET = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs" / "synthetic.yaml"
VIDEO = ["data.source.clip_length=4", "data.target.clip_length=4", "data.val.clip_length=4"]
CASES: dict[str, list[str]] = {
    "source_only": ["method.name=source_only"],
    "source_only_aug": ["method.name=source_only_aug"],
    "self_training": ["method.name=self_training"],
    "daformer": ["method.name=daformer"],
    "mic": ["method.name=mic"],
    "pipa": ["method.name=pipa"],
    "pixel": ["method.name=pipa", "method.pipa.patch.weight=0", "method.pipa.temporal.weight=0"],
    "patch": ["method.name=pipa", "method.pipa.pixel.weight=0", "method.pipa.temporal.weight=0"],
    "pipa_on_daformer": ["method.name=pipa", "method.pipa.base=daformer"],
    "pipa_on_mic": ["method.name=pipa", "method.pipa.base=mic"],
    "pipa_student_student": ["method.name=pipa", "method.pipa.patch.views=student_student",
                             "method.pipa.patch.negatives=location"],
    "pipa_memory_teacher": ["method.name=pipa", "method.pipa.memory.source=teacher"],
    "pipa_late_start": ["method.name=pipa", "method.pipa.pixel.start=4", "method.pipa.patch.start=6"],
    "video_self_training": ["method.name=self_training", *VIDEO],
    "video_pipa": ["method.name=pipa_video", *VIDEO],
    "video_pipa_noflowpos": ["method.name=pipa_video", "method.pipa.temporal.use_flow=false", *VIDEO],
}


def fingerprint(weights: Path) -> str:
    tensors = load_file(str(weights))
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fingerprints")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    for name, overrides in CASES.items():
        if args.only and name not in args.only:
            continue
        cfg = load_config(PRESET, [*overrides, f"train.iterations={args.iterations}", "optim.warmup_iters=2",
                                   "data.source.num_images=64", "data.target.num_images=64",
                                   "data.val.num_images=16", "data.batch_size=4", "train.checkpoint_interval=0",
                                   "train.overwrite=true", f"train.out_dir={Path(args.out) / name}"])
        res = train(cfg, progress="none")
        print(f"{name:24s} {fingerprint(Path(res.out_dir) / 'model.safetensors')} mIoU {res.miou:.4f}", flush=True)


if __name__ == "__main__":
    main()
