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
    "image": ["source_only", "adabn", "source_only_aug", "self_training", "pixel", "patch", "pipa", "oracle"],
    "video": ["source_only", "adabn", "self_training", "pipa"],
    # the high-resolution track (``--track hires``, not in ``make demo``): renders at 192x384.
    # daformer trains on the 96x192 renders and is evaluated on 192x384 (its input downscaled, as
    # DAFormer's 1024x512 Cityscapes); hrda sees 192x384 crops as a 96x192 context and a 96x192 detail
    "hires": ["daformer", "hrda", "hrda+pipa"],
}
EXTRA_METHODS: dict[str, list[str]] = {
    "image": ["daformer", "mic", "daformer+pipa", "mic+pipa"],
    "video": ["source_only_aug", "pixel", "pipa_dis_flow", "pipa_no_flow", "oracle"],
    "hires": ["oracle"],
}
TABLE_ORDER = ["source_only", "adabn", "source_only_aug", "self_training", "daformer", "mic", "hrda", "pixel", "patch",
               "pipa", "pipa_dis_flow", "pipa_no_flow", "daformer+pipa", "mic+pipa", "hrda+pipa", "oracle"]
ALL_METHODS = sorted({m for d in (TRACK_METHODS, EXTRA_METHODS) for ms in d.values() for m in ms})
BASELINES = ("source_only", "adabn", "source_only_aug")  # no target pseudo-labels
ADAPTED = ("self_training", "daformer", "mic", "hrda", "pixel", "patch", "pipa", "pipa_dis_flow", "pipa_no_flow",
           "daformer+pipa", "mic+pipa", "hrda+pipa")
# each PiPa++ row against its base recipe, seed by seed (same term settings on every base)
PIPA_BASE = {"pixel": "self_training", "patch": "self_training", "pipa": "self_training",
             "pipa_dis_flow": "self_training", "pipa_no_flow": "self_training",
             "daformer+pipa": "daformer", "mic+pipa": "mic", "hrda+pipa": "hrda"}
# Demo rows that are a configuration of a method rather than a method of their own: the PiPa++
# ablation on the self_training base. ``pipa`` on the video track adds L_temp (pipa_video).
ROWS: dict[str, tuple[str, list[str]]] = {
    "pixel": ("pipa", ["method.pipa.patch.weight=0", "method.pipa.temporal.weight=0"]),  # base + L_pix
    "patch": ("pipa", ["method.pipa.pixel.weight=0", "method.pipa.temporal.weight=0"]),  # base + L_patch
    "pipa": ("pipa", []),  # base + L_pix + L_patch (+ L_temp on the video track), sampling and memory
    "daformer+pipa": ("pipa", ["method.pipa.base=daformer"]),  # the same terms on DAFormer's recipe
    "mic+pipa": ("pipa", ["method.pipa.base=mic"]),  # ... and on MIC's
    # video: the temporal term with the target clips' flow estimated by OpenCV DIS, or without flow
    # (the validation clips keep the exact flow: it measures temporal consistency)
    "pipa_dis_flow": ("pipa", ["data.target.synthetic_flow=dis"]),
    "pipa_no_flow": ("pipa", ["data.target.synthetic_flow=none"]),
    "hrda": ("daformer", []),  # + HIRES_HRDA on the hires track
    "hrda+pipa": ("pipa", ["method.pipa.base=daformer"]),  # ... PiPa++ on HRDA (context term features)
}
HIRES = (192, 384)  # (H, W) of the hires track's renders
# HRDA on the hires track: the published ratios (context 0.5, detail crop half the crop per side)
HIRES_HRDA = ["model.hrda.enabled=true", "model.hrda.context_scale=0.5", "model.hrda.detail_crop=[96,192]",
              "model.hrda.crop_divisible=8", "model.hrda.attention_channels=32"]
EMBEDDING_FIGURE = ("self_training", "pipa")


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
    resume: bool = False  # reuse finished runs whose resolved config is unchanged
    jobs: int = 1  # runs trained at once, each in its own process with cores // jobs threads


def auto_jobs() -> int:
    """Parallel demo runs: 1 on a GPU; on a CPU one per core up to 4. The demo's small model keeps
    two cores only ~60 % busy from one process: two single-thread runs at once train 1.6× as many
    iterations per second here (2 cores)."""
    import os

    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def run_config(track: str, method: str, seed: int, opts: DemoOptions, more: tuple[str, ...] = ()) -> Config:
    """The config of one demo run: the shared preset, changed only where the method needs it
    (``more``: further key=value overrides, applied last; ``scripts/ab_demo.py``)."""
    name, extra = ROWS.get(method, (method, []))
    if name == "pipa" and track == "video":
        name = "pipa_video"
    overrides = [f"method.name={name}", *extra, f"train.seed={seed}", "train.overwrite=true",
                 f"train.out_dir={opts.out / track / method / f'seed{seed}'}"]
    if method == "oracle":  # labelled target training data (an upper bound, not adaptation)
        overrides += ["data.source.domain=target"]
    if track == "video":
        overrides += ["data.source.clip_length=4", "data.target.clip_length=4", "data.val.clip_length=4"]
    if track == "hires":
        H, W = HIRES
        overrides += [f"data.val.height={H}", f"data.val.width={W}"]
        if method in ("hrda", "hrda+pipa"):
            overrides += [f"data.{d}.{k}={v}" for d in ("source", "target") for k, v in (("height", H), ("width", W))]
        if method in ("hrda", "hrda+pipa"):
            overrides += HIRES_HRDA
        else:  # single-resolution rows see the 96x192 renders; evaluated on 192x384 through a downscaled input
            overrides += [f"eval.input_size=[{H // 2},{W // 2}]"]
    if opts.quick:
        overrides += ["train.iterations=150", "optim.warmup_iters=15", "data.source.num_images=240",
                      "data.target.num_images=240", "data.val.num_images=60", "train.checkpoint_interval=0"]
    if opts.iterations:
        overrides += [f"train.iterations={opts.iterations}"]
    if opts.jobs > 1:  # recorded in the config: a run's numerics depend on its thread count
        overrides += [f"train.threads={_threads(opts.jobs)}"]
    return load_config(PRESETS / "synthetic.yaml", [*overrides, *more])


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    results: dict[tuple[str, str, int], TrainResult] = {}
    comps: dict[tuple[str, str, int], dict[str, float]] = {}
    t_start = time.perf_counter()
    order = [(track, method, seed) for track in opts.tracks for method in track_methods(track, opts.methods)
             for seed in range(opts.seeds)]
    trained = runs_to_train(order)
    if opts.jobs > 1 and len(trained) > 1:
        _train_parallel(trained, opts, results, comps)
    else:
        for key in trained:
            print(f"== {key[0]} / {key[1]} / seed {key[2]}", flush=True)
            results[key], comps[key] = _run_one(*key, opts, compact=key in order)
            _print_result(key, results[key], parallel=False)
    for key in order:
        track, method, seed = key
        if method == "adabn":
            print(f"== {track} / adabn / seed {seed}", flush=True)
            results[key] = adabn_run(track, seed, opts, results[(track, "source_only", seed)])
            comps[key] = _compactness(track, results[key], opts)
            _print_result(key, results[key], parallel=False)
        res = results[key]
        runs.append({
            "track": track, "method": method, "seed": seed, "target_miou": round(res.miou, 3),
            "per_class_iou": [None if math.isnan(v) else round(v, 3) for v in res.per_class_iou],
            "iterations": res.iterations, "train_seconds": round(res.train_seconds, 2),
            "compactness": {k: round(v, 4) for k, v in comps[key].items()},
            "temporal_consistency": None if res.temporal_consistency is None else round(res.temporal_consistency, 3),
        })
    class_names = results[order[0]].class_names if order else []
    wall = time.perf_counter() - t_start
    summary = {"runs": runs, "class_names": class_names, "wall_seconds": round(wall, 1),
               "options": {"seeds": opts.seeds, "tracks": list(opts.tracks), "quick": opts.quick, "jobs": opts.jobs}}
    (opts.out / "results.json").write_text(json.dumps(summary, indent=2))
    write_report(opts, runs, results, class_names, wall)
    print(f"wrote {opts.out / 'results.json'} and {opts.out / 'report.md'} ({wall:.0f} s)")
    return summary


def runs_to_train(order: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The (track, method, seed) runs to train for the table rows ``order``: every row but AdaBN's,
    plus the source_only run an AdaBN row starts from when the table does not show it."""
    trained = [k for k in order if k[1] != "adabn"]
    return trained + [(t, "source_only", s) for t, m, s in order if m == "adabn" and (t, "source_only", s) not in trained]


def _threads(jobs: int) -> int:
    import os

    return max(1, (os.cpu_count() or 1) // jobs)


def _run_one(track: str, method: str, seed: int, opts: DemoOptions, compact: bool = True
             ) -> tuple[TrainResult, dict[str, float]]:
    """Train (or reuse) one demo run and measure its feature compactness (in a worker process
    when ``opts.jobs`` > 1)."""
    if opts.jobs > 1:
        import torch

        torch.set_num_threads(_threads(opts.jobs))
    res = _train_or_reuse(run_config(track, method, seed, opts), opts.resume)
    return res, (_compactness(track, res, opts) if compact else {})


def _train_parallel(keys: list[tuple[str, str, int]], opts: DemoOptions,
                    results: dict[tuple[str, str, int], TrainResult],
                    comps: dict[tuple[str, str, int], dict[str, float]]) -> None:
    """``opts.jobs`` runs at once in spawned processes, the slowest kinds first. A failed run stops
    the demo (finished runs stay on disk: ``--resume`` reuses them)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    slow = [k for k in keys if k[1] not in BASELINES and k[1] != "oracle"]
    queue = slow + [k for k in keys if k not in slow]
    print(f"== {len(queue)} runs, {opts.jobs} at a time ({_threads(opts.jobs)} thread(s) each)", flush=True)
    with ProcessPoolExecutor(opts.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, *k, opts): k for k in queue}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()  # type: ignore[misc]
                key = futures[fut]
                results[key], comps[key] = fut.result()
                _print_result(key, results[key], parallel=True)


def _print_result(key: tuple[str, str, int], res: TrainResult, parallel: bool) -> None:
    head = f"== {key[0]} / {key[1]} / seed {key[2]}: " if parallel else "   "
    print(f"{head}target mIoU {res.miou:.2f}  ({res.train_seconds:.0f} s)", flush=True)


def write_report(opts: DemoOptions, runs: list[dict[str, Any]], results: dict[tuple[str, str, int], TrainResult],
                 class_names: list[str], wall: float) -> None:
    """Tables, gains, compactness, confusion and figures -> ``report.md`` (printed tables too)."""
    tracks = list(dict.fromkeys(r["track"] for r in runs))
    tables = {track: markdown_table(runs, track, class_names) for track in tracks}
    figures = {}
    for track in tracks:
        try:
            figures[track] = _figure(opts, track, results, class_names)
        except Exception as exc:  # a figure must never cost the results
            print(f"   (no figure for {track}: {exc})")
    for track in tracks:
        try:
            name = _embedding_figure(opts, track, results, class_names)
            if name:
                figures[f"{track}/embedding"] = name
        except Exception as exc:
            print(f"   (no embedding figure for {track}: {exc})")
    notes = {track: gains_text(runs, track) + "\n\n" + compactness_table(runs, track) for track in tracks}
    confusions = {track: _confusion_text(results, track, class_names) for track in tracks}
    _write_report(opts, tables, figures, wall, notes, confusions)
    for track, table in tables.items():
        print(f"\n### {track} track: target mIoU (%)\n\n{table}\n")


def report_only(opts: DemoOptions) -> None:
    """Rewrite ``report.md`` from an earlier demo's ``results.json`` and run folders."""
    path = opts.out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the demo first")
    summary = json.loads(path.read_text())
    results: dict[tuple[str, str, int], TrainResult] = {}
    for r in summary["runs"]:
        run_dir = opts.out / r["track"] / r["method"] / f"seed{r['seed']}"
        saved = run_dir / "result.json"
        if saved.is_file():
            res = TrainResult(**json.loads(saved.read_text())["result"])
        else:  # adabn rows keep only their weights
            res = TrainResult(r["target_miou"], [math.nan if v is None else v for v in r["per_class_iou"]],
                              r["iterations"], r["train_seconds"], str(run_dir), summary["class_names"])
        results[(r["track"], r["method"], r["seed"])] = res
    opts.seeds = summary["options"]["seeds"]
    opts.quick = summary["options"]["quick"]
    write_report(opts, summary["runs"], results, summary["class_names"], summary["wall_seconds"])
    print(f"wrote {opts.out / 'report.md'}")


def _train_or_reuse(cfg: Config, resume: bool) -> TrainResult:
    """Train, or with ``resume`` reuse a finished run of exactly this config (``result.json``)."""
    import dataclasses

    from .config import to_dict

    path = Path(cfg.train.out_dir) / "result.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config") == to_dict(cfg):
            print(f"   reusing the finished run in {path.parent}", flush=True)
            return TrainResult(**saved["result"])
    res = train(cfg, progress="none")
    from .core.io import atomic_write

    payload = json.dumps({"config": to_dict(cfg), "result": dataclasses.asdict(res)})
    atomic_write(path, lambda p: Path(p).write_text(payload))
    return res


def _compactness(track: str, res: TrainResult, opts: DemoOptions) -> dict[str, float]:
    """Intra- vs inter-class cosine similarity of the model's target pixel features (val split)."""
    from .evaluation.embedding import compactness, pixel_embeddings
    from .models import Segmentor

    try:
        cfg = run_config(track, "source_only", 0, opts)
        feats, labels = pixel_embeddings(Segmentor.from_pretrained(res.out_dir), _val(cfg), cfg.model.num_classes)
        return compactness(feats, labels)
    except Exception as exc:  # a figure of merit must never cost the results
        print(f"   (no compactness: {exc})")
        return {}


_VAL_CACHE: dict[str, Any] = {}


def _val(cfg: Config) -> Any:
    from .data.datasets import build_dataset

    key = repr(cfg.data.val)
    if key not in _VAL_CACHE:
        _VAL_CACHE[key] = build_dataset(cfg.data.val, cfg.model.num_classes, cfg.data.cache_dir)
    return _VAL_CACHE[key]


def compactness_table(runs: list[dict[str, Any]], track: str) -> str:
    """Mean over seeds of the compactness figures, one row per method."""
    rows = [r for r in runs if r["track"] == track and r.get("compactness")]
    if not rows:
        return ""
    lines = ["Target pixel features (decoder map F, val split): mean cosine similarity within a class "
             "(intra), between classes (inter), and the gap (higher = more compact and separable).", "",
             "| method | intra | inter | gap |", "|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r["compactness"] for r in rows if r["method"] == m]
        vals = [statistics.mean([x[k] for x in rs]) for k in ("intra", "inter", "gap")]
        cells = [f"{v:.3f}" for v in vals]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _embedding_figure(opts: DemoOptions, track: str, results: dict, class_names: list[str]) -> str:
    from .evaluation.embedding import compactness, pixel_embeddings, project_2d
    from .models import Segmentor
    from .viz import default_palette, embedding_figure

    picked = [(m, results.get((track, m, 0))) for m in EMBEDDING_FIGURE]
    picked = [(m, r) for m, r in picked if r is not None]
    if not picked:
        return ""
    cfg = run_config(track, "source_only", 0, opts)
    points, notes = {}, {}
    for m, res in picked:
        feats, labels = pixel_embeddings(Segmentor.from_pretrained(res.out_dir), _val(cfg), cfg.model.num_classes,
                                         per_class=200)
        c = compactness(feats, labels)
        points[m] = (project_2d(feats).numpy(), labels.numpy())
        notes[m] = f"intra {c['intra']:.2f}, inter {c['inter']:.2f}"
    name = f"embedding_{track}.png"
    embedding_figure(opts.out / name, points, default_palette(len(class_names)), class_names, notes)
    return name


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
    res = evaluate(model, val, cfg.model.num_classes, device, cfg.train.eval_batch_size, protocol=cfg.eval)
    out = opts.out / track / "adabn" / f"seed{seed}"
    model.save_pretrained(out)
    return TrainResult(res.miou, res.per_class_iou, 0, seconds, str(out), base.class_names,
                       res.confusion.tolist(), res.miou, temporal_consistency=res.temporal_consistency)


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def markdown_table(runs: list[dict[str, Any]], track: str, class_names: list[str]) -> str:
    """Rows = methods (mean ± std over seeds), columns = mIoU (temporal consistency on clips with
    flow) then per-class IoU."""
    rows = [r for r in runs if r["track"] == track]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tc = any(r.get("temporal_consistency") is not None for r in rows)
    head = "| method | seeds | mIoU | " + ("temporal consistency | " if tc else "")
    lines = [head + " | ".join(class_names) + " |", "|" + "---|" * (len(class_names) + 3 + tc)]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        per = [_mean_std([r["per_class_iou"][k] if r["per_class_iou"][k] is not None else math.nan for r in rs])
               for k in range(len(class_names))]
        cons = ""
        if tc:
            cons = _mean_std([r["temporal_consistency"] if r.get("temporal_consistency") is not None else math.nan
                              for r in rs]) + " | "
        lines.append(f"| {m} | {len(rs)} | {_mean_std([r['target_miou'] for r in rs])} | {cons}" + " | ".join(per) + " |")
    return "\n".join(lines)


def _figure(opts: DemoOptions, track: str, results: dict, class_names: list[str]) -> str:
    import torch

    from .data.datasets import build_dataset
    from .models import Segmentor
    from .viz import default_palette, qualitative_figure

    seed0 = [(m, r) for (t, m, s), r in results.items() if t == track and s == 0 and m in ("source_only", "adabn",
                                                                                             "self_training", "pipa", "oracle")]
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
    for m, b in PIPA_BASE.items():  # the PiPa++ rows against their base recipe, seed by seed
        st = {r["seed"]: r["target_miou"] for r in runs if r["track"] == track and r["method"] == b}
        mine = {r["seed"]: r["target_miou"] for r in runs if r["track"] == track and r["method"] == m}
        paired = [mine[s] - st[s] for s in sorted(mine) if s in st]
        if paired:
            per_seed = ", ".join(f"{d:+.1f}" for d in paired)
            lines.append(f"- {m} − {b}, same seeds: mean {statistics.mean(paired):+.2f} (per seed {per_seed}).")
    return "\n".join(lines)


def _confusion_text(results: dict, track: str, class_names: list[str]) -> str:
    import torch

    from .evaluation.metrics import format_confusion

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
        if figures.get(f"{track}/embedding"):
            lines += ["Target pixel features of self_training and pipa (seed 0), principal-component projection:",
                      "", f"![embeddings {track}]({figures[track + '/embedding']})", ""]
    (opts.out / "report.md").write_text("\n".join(lines))
