"""Which branch of a trained HRDA model carries its prediction (a diagnosis that prints a table, not a test).

    PYTHONPATH=src python scripts/hrda_branches.py RUN [RUN ...]

Evaluates each HRDA run folder with ``pipa eval`` (its own protocol) three times: as trained (the
scale attention fuses the context and detail predictions), with the attention forced to 0 (the
context branch alone, upsampled) and forced to 1 (the detail branch alone, by sliding windows), and
prints mIoU and per-class IoU of each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pipa.models.segmentor as segmentor  # noqa: E402
from pipa.cli import main as pipa_main  # noqa: E402
from pipa.models.hrda import fuse  # noqa: E402


def _with_attention(value: float):
    def fused(lr, att, hr, box, size):  # type: ignore[no-untyped-def]
        return fuse(lr, torch.full_like(att, value), hr, box, size)

    return fused


VARIANTS = {"fused (as trained)": fuse, "context only (attention 0)": _with_attention(0.0),
            "detail only (attention 1)": _with_attention(1.0)}


def evaluate(run: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pipa_main(["eval", run, "--json"])
    if code:
        raise SystemExit(f"pipa eval {run} failed with exit code {code}")
    text = out.getvalue()
    return json.loads(text[text.index("{"):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="HRDA run folders (model.hrda.enabled=true)")
    args = ap.parse_args()
    header = None
    for run in args.runs:
        for name, fn in VARIANTS.items():
            segmentor.fuse = fn  # the name _forward_hrda calls
            try:
                d = evaluate(run)
            finally:
                segmentor.fuse = fuse
            if header is None:
                header = d["class_names"]
                print("| run | branch | mIoU | " + " | ".join(header) + " |")
                print("|---" * (3 + len(header)) + "|")
            label = "/".join(Path(run).resolve().parts[-2:])  # e.g. hrda/seed0
            print(f"| {label} | {name} | {d['miou']:.2f} | "
                  + " | ".join(f"{v:.1f}" for v in d["per_class_iou"]) + " |", flush=True)


if __name__ == "__main__":
    main()
