"""``pipa demo``: train every method on the built-in benchmark, evaluate on the target, report.

    pipa demo                      # image track, main methods, 1 seed
    pipa demo --seeds 3 --track both
    pipa demo --quick              # a smoke run of a minute or two

Writes ``results.json`` and ``report.md`` (with a qualitative figure) into ``--out``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, load_config
from .engine.trainer import TrainResult, train

PRESETS = Path(__file__).parent / "configs"

# Methods per track, in table order: the default set, then the rest of the ablation
# (``--methods all``). ``adabn`` is the source_only model with target BN statistics (no training).
TRACK_METHODS: dict[str, list[str]] = {
    "image": ["source_only", "adabn", "source_only_aug", "self_training", "oracle"],
    "video": ["source_only", "adabn", "self_training", "oracle"],
}
EXTRA_METHODS: dict[str, list[str]] = {
    "image": ["daformer", "mic"],
    "video": ["source_only_aug"],
}
TABLE_ORDER = ["source_only", "adabn", "source_only_aug", "self_training", "daformer", "mic", "oracle"]
ALL_METHODS = sorted({m for d in (TRACK_METHODS, EXTRA_METHODS) for ms in d.values() for m in ms})
BASELINES = ("source_only", "adabn", "source_only_aug")  # no target pseudo-labels
ADAPTED = ("self_training", "daformer", "mic")


def track_methods(track: str, selection: tuple[str, ...] | None) -> list[str]:
    if selection is None:
        chosen = TRACK_METHODS[track]
    elif selection == ("all",):
        chosen = TRACK_METHODS[track] + EXTRA_METHODS[track]
    else:
        chosen = [m for m in TRACK_METHODS[track] + EXTRA_METHODS[track] if m in selection]
    return sorted(chosen, key=TABLE_ORDER.index)


@dataclass
class DemoOptions:
    out: Path = Path("runs/demo")
    seeds: int = 1
    tracks: tuple[str, ...] = ("image",)
    methods: tuple[str, ...] | None = None
    quick: bool = False
    iterations: int | None = None


def run_config(track: str, method: str, seed: int, opts: DemoOptions) -> Config:
    """The config of one demo run: the shared preset, changed only where the method needs it."""
    overrides = [f"method.name={method}", f"train.seed={seed}", "train.overwrite=true",
                 f"train.out_dir={opts.out / track / method / f'seed{seed}'}"]
    if method == "oracle":  # labelled target training data (an upper bound, not adaptation)
        overrides += ["data.source.domain=target"]
    if track == "video":
        overrides += ["data.source.clip_length=4", "data.target.clip_length=4", "data.val.clip_length=4"]
    if opts.quick:
        overrides += ["train.iterations=150", "optim.warmup_iters=15", "data.source.num_images=240",
                      "data.target.num_images=240", "data.val.num_images=60", "train.checkpoint_interval=0"]
    if opts.iterations:
        overrides += [f"train.iterations={opts.iterations}"]
    return load_config(PRESETS / "synthetic.yaml", overrides)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    results: dict[tuple[str, str, int], TrainResult] = {}
    t_start = time.perf_counter()
    class_names: list[str] = []
    for track in opts.tracks:
        for method in track_methods(track, opts.methods):
            for seed in range(opts.seeds):
                print(f"== {track} / {method} / seed {seed}", flush=True)
                if method == "adabn":
                    base = results.get((track, "source_only", seed))
                    if base is None:
                        base = train(run_config(track, "source_only", seed, opts), progress="none")
                        results[(track, "source_only", seed)] = base
                    res = adabn_run(track, seed, opts, base)
                else:
                    res = train(run_config(track, method, seed, opts), progress="none")
                class_names = res.class_names
                results[(track, method, seed)] = res
                print(f"   target mIoU {res.miou:.2f}  ({res.train_seconds:.0f} s)", flush=True)
                runs.append({
                    "track": track, "method": method, "seed": seed, "target_miou": round(res.miou, 3),
                    "per_class_iou": [None if math.isnan(v) else round(v, 3) for v in res.per_class_iou],
                    "iterations": res.iterations, "train_seconds": round(res.train_seconds, 2),
                })
    wall = time.perf_counter() - t_start
    summary = {"runs": runs, "class_names": class_names, "wall_seconds": round(wall, 1),
               "options": {"seeds": opts.seeds, "tracks": list(opts.tracks), "quick": opts.quick}}
    (opts.out / "results.json").write_text(json.dumps(summary, indent=2))
    tables = {track: markdown_table(runs, track, class_names) for track in opts.tracks}
    figures = {}
    for track in opts.tracks:
        try:
            figures[track] = _figure(opts, track, results, class_names)
        except Exception as exc:  # a figure must never cost the results
            print(f"   (no figure for {track}: {exc})")
    notes = {track: gains_text(runs, track) for track in opts.tracks}
    confusions = {track: _confusion_text(results, track, class_names) for track in opts.tracks}
    _write_report(opts, tables, figures, wall, notes, confusions)
    for track, table in tables.items():
        print(f"\n### {track} track: target mIoU (%)\n\n{table}\n")
    print(f"wrote {opts.out / 'results.json'} and {opts.out / 'report.md'} ({wall:.0f} s)")
    return summary


def adabn_run(track: str, seed: int, opts: DemoOptions, base: TrainResult) -> TrainResult:
    """AdaBN row: the source_only model, BN statistics recomputed on target training images."""
    import torch

    from .data.datasets import build_dataset
    from .engine.trainer import select_device
    from .evaluation.evaluate import evaluate
    from .models import Segmentor
    from .uda.adabn import recompute_bn_statistics

    cfg = run_config(track, "source_only", seed, opts)
    device = select_device(cfg.train.device)
    model = Segmentor.from_pretrained(base.out_dir).to(device)
    target = build_dataset(cfg.data.target, cfg.model.num_classes, cfg.data.cache_dir, labelled=False)
    t0 = time.perf_counter()
    recompute_bn_statistics(model, target, device, cfg.train.eval_batch_size, max_images=1000)
    seconds = time.perf_counter() - t0
    val = build_dataset(cfg.data.val, cfg.model.num_classes, cfg.data.cache_dir)
    res = evaluate(model, val, cfg.model.num_classes, device, cfg.train.eval_batch_size)
    out = opts.out / track / "adabn" / f"seed{seed}"
    model.save_pretrained(out)
    return TrainResult(res.miou, res.per_class_iou, 0, seconds, str(out), base.class_names,
                       res.confusion.tolist(), res.miou)


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def markdown_table(runs: list[dict[str, Any]], track: str, class_names: list[str]) -> str:
    """Rows = methods (mean ± std over seeds), columns = mIoU then per-class IoU."""
    rows = [r for r in runs if r["track"] == track]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | seeds | mIoU | " + " | ".join(class_names) + " |", "|" + "---|" * (len(class_names) + 3)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        per = [_mean_std([r["per_class_iou"][k] if r["per_class_iou"][k] is not None else math.nan for r in rs])
               for k in range(len(class_names))]
        lines.append(f"| {m} | {len(rs)} | {_mean_std([r['target_miou'] for r in rs])} | " + " | ".join(per) + " |")
    return "\n".join(lines)


def _figure(opts: DemoOptions, track: str, results: dict, class_names: list[str]) -> str:
    import torch

    from .data.datasets import build_dataset
    from .models import Segmentor
    from .viz import default_palette, qualitative_figure

    seed0 = [(m, r) for (t, m, s), r in results.items() if t == track and s == 0]
    if not seed0:
        return ""
    cfg = run_config(track, seed0[0][0], 0, opts)
    val = build_dataset(cfg.data.val, cfg.model.num_classes, cfg.data.cache_dir)
    picks = [0, len(val) // 3, 2 * len(val) // 3]
    items = [val[i] for i in picks]
    images = torch.stack([it["image"] for it in items])
    preds = {}
    for method, res in seed0:
        model = Segmentor.from_pretrained(res.out_dir)
        preds[method] = list(model.predict(images).numpy())
    name = f"qualitative_{track}.png"
    qualitative_figure(opts.out / name, [(it["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for it in items],
                       [it["label"].numpy() for it in items], preds, default_palette(len(class_names)), class_names)
    return name


def _mean_of(runs: list[dict[str, Any]], track: str, method: str) -> float | None:
    xs = [r["target_miou"] for r in runs if r["track"] == track and r["method"] == method]
    return statistics.mean(xs) if xs else None


def gains_text(runs: list[dict[str, Any]], track: str) -> str:
    """Each adaptation method against source_only and against the strongest cheap baseline."""
    base = {m: _mean_of(runs, track, m) for m in BASELINES}
    base = {m: v for m, v in base.items() if v is not None}
    if not base:
        return ""
    best = max(base, key=lambda m: base[m])
    lines = [f"Strongest baseline without target pseudo-labels: **{best}** ({base[best]:.1f})."]
    for m in ADAPTED:
        v = _mean_of(runs, track, m)
        if v is None:
            continue
        so = base.get("source_only")
        vs_so = f"{v - so:+.1f} over source_only, " if so is not None else ""
        lines.append(f"- {m}: {v:.1f} mIoU, {vs_so}{v - base[best]:+.1f} over {best}.")
    return "\n".join(lines)


def _confusion_text(results: dict, track: str, class_names: list[str]) -> str:
    import torch

    from .cli import format_confusion

    res = results.get((track, "source_only", 0))
    if res is None or not res.confusion:
        return ""
    return format_confusion(torch.tensor(res.confusion), class_names)


def _write_report(opts: DemoOptions, tables: dict[str, str], figures: dict[str, str], wall: float,
                  notes: dict[str, str] | None = None, confusions: dict[str, str] | None = None) -> None:
    lines = ["# pipa demo report", "",
             f"Built-in synthetic benchmark (source 'game' → target 'camera'), {opts.seeds} seed(s), "
             f"{'quick smoke run, ' if opts.quick else ''}wall time {wall:.0f} s.",
             "Target mIoU (%) on the target validation split; mean ± std over seeds.", ""]
    for track, table in tables.items():
        lines += [f"## {track} track", "", table, ""]
        if notes and notes.get(track):
            lines += [notes[track], ""]
        if confusions and confusions.get(track):
            lines += ["Source-only confusion on the target (seed 0):", "", "```", confusions[track], "```", ""]
        if figures.get(track):
            lines += [f"![qualitative {track}]({figures[track]})", ""]
    (opts.out / "report.md").write_text("\n".join(lines))
