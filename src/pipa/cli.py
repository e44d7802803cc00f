"""The ``pipa`` command line (also ``python -m pipa``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

def _resolve_config(name: str) -> Path:
    """A YAML path, or the name of a preset shipped with pipa (``synthetic``)."""
    from .config import resolve_preset

    return resolve_preset(name)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .core import dist as distributed
    from .engine.trainer import train

    from .engine.callbacks import Preempted

    cfg = load_config(_resolve_config(args.config), args.overrides)
    try:
        res = train(cfg, resume=args.resume, allow_changes=args.allow_changes)
        main_rank = distributed.rank() == 0
    except Preempted as exc:  # SIGTERM: a checkpoint was written; the exit code says "terminated"
        print(f"pipa: {exc}", file=sys.stderr, flush=True)
        return 143
    finally:
        distributed.cleanup()
    if main_rank:
        print(f"target mIoU {res.miou:.2f} after {res.iterations} iterations (last checkpoint); run folder {res.out_dir}")
        if cfg.train.eval_interval > 0 and res.best_iteration >= 0:
            print(f"best on val: {res.best_miou:.2f} at iteration {res.best_iteration} (selected on the target val "
                  f"split, an oracle choice; weights in {res.out_dir}/best)")
    return 0


def _load_for_eval(path: Path, overrides: list[str]):
    from .config import load_config
    from .models import Segmentor
    from .models.hub import config_next_to, resolve_weights

    path = resolve_weights(path)  # a hub id -> its cached snapshot
    run_dir = path if path.is_dir() else path.parent
    cfg_file = config_next_to(run_dir)  # a run folder, its best/ folder (config one level up) or exported weights
    if cfg_file is None and not any(o.startswith("data.val.") for o in overrides):
        raise ValueError(f"{run_dir}: no config.yaml next to these weights, so the dataset to evaluate on is unknown: "
                         "name it, e.g. data.val.name=cityscapes data.val.root=data/cityscapes eval.protocol=gta2cs")
    cfg = load_config(cfg_file, overrides)
    return Segmentor.from_pretrained(path), cfg


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .data.datasets import build_dataset
    from .engine.trainer import select_device
    from .evaluation.evaluate import evaluate

    model, cfg = _load_for_eval(Path(args.path), args.overrides)
    device = select_device(cfg.train.device)
    dataset = build_dataset(cfg.data.val, model.num_classes, cfg.data.cache_dir)
    res = evaluate(model.to(device), dataset, model.num_classes, device, cfg.train.eval_batch_size, protocol=cfg.eval)
    names = model.class_names
    if args.json:
        tc = {} if res.temporal_consistency is None else {
            "temporal_consistency": res.temporal_consistency,
            "temporal_consistency_per_class": [None if math.isnan(v) else v
                                               for v in res.temporal_consistency_per_class or []]}
        print(json.dumps({"miou": res.miou, "reported": res.subsets, "class_names": names,
                          "per_class_iou": [None if math.isnan(v) else v for v in res.per_class_iou], **tc,
                          **({"confusion": res.confusion.tolist()} if args.confusion else {})}))
        return 0
    print(f"mIoU {res.miou:.2f} on {len(dataset)} images")
    if res.temporal_consistency is not None:
        print(f"temporal consistency {res.temporal_consistency:.2f} % (prediction of frame t = flow-warped "
              "prediction of frame t-k, visible labelled pixels)")
    for label, value in list(res.subsets.items())[1:]:
        print(f"{label}: {value:.2f}")
    for n, v in zip(names, res.per_class_iou):
        print(f"  {n:>14s}  {'–' if math.isnan(v) else f'{v:5.1f}'}")
    if args.confusion:
        from .evaluation.metrics import format_confusion

        print(format_confusion(res.confusion, names))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment image files, frame folders and video files with the weights' evaluation protocol."""
    from .api import load
    from .models.hub import config_next_to, resolve_weights
    from .predict import predict_sources

    folder = resolve_weights(args.weights)
    folder = folder if folder.is_dir() else folder.parent
    if not args.no_protocol and config_next_to(folder) is None:
        raise FileNotFoundError(f"{folder}: no config.yaml next to these weights, so their evaluation protocol "
                                "(input resize, sliding window) is unknown: export them with pipa export, or pass "
                                "--no-protocol to segment whole images at their own size")
    seg = load(folder, device=args.device, batch_size=args.batch_size)
    n = predict_sources(seg, [Path(i) for i in args.inputs], Path(args.out), label_ids=args.label_ids,
                        color=not args.no_color, overlay=not args.no_overlay, video=args.video)
    print(f"wrote predictions for {n} image(s) or frame(s) to {args.out}")
    return 0


def cmd_convert_mit(args: argparse.Namespace) -> int:
    """An official mit_b*.pth -> a Segformer folder for ``model.pretrained``."""
    from .models.convert import convert_mit

    preset = convert_mit(args.src, args.out)
    print(f"{args.src} -> {args.out} ({preset}); use it with model.pretrained={args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Inference weights of the student or the EMA teacher from a training checkpoint."""
    from .engine.checkpoint import segmentor_from_checkpoint

    model, iteration = segmentor_from_checkpoint(args.run, args.which)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"{out} is not empty: choose an empty or new folder, or pass --overwrite")
    model.save_pretrained(out)
    # the run's config (the evaluation protocol for pipa.load / pipa eval) and a model card
    from .config import load_config
    from .core.io import atomic_write
    from .models.hub import model_card

    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    cfg = None
    if (run_dir / "config.yaml").is_file():
        text = (run_dir / "config.yaml").read_text()
        atomic_write(out / "config.yaml", lambda p: Path(p).write_text(text))
        cfg = load_config(out / "config.yaml")
    card = model_card(run_dir, cfg, args.which, iteration)
    atomic_write(out / "README.md", lambda p: Path(p).write_text(card))
    print(f"wrote the {args.which} of iteration {iteration} to {args.out} (weights, config, model card)")
    size = args.program or args.example_size
    if args.program or args.torch_export or args.onnx:
        from .models.program import export_program

        done = export_program(model, out, size[0], size[1], torch_export=bool(args.program or args.torch_export),
                              onnx=args.onnx)
        shape = "(B, 3, H, W), H and W from 64" if done.dynamic_size else f"(B, 3, {size[0]}, {size[1]}) only ({done.why})"
        print(f"wrote {', '.join(str(p) for p in done.paths)}: images {shape}, RGB in [0, 1] -> logits (B, K, H, W)")
        if args.onnx:
            print(f"onnxruntime check: max |logit difference| {done.onnx_max_diff:.2g}" if done.onnx_checked
                  else "onnxruntime is not installed: model.onnx was not run (pip install onnxruntime)")
    if args.push_to_hub:
        from .models.hub import push_folder

        print(f"pushed {out} to {push_folder(out, args.push_to_hub, args.private)}")
    return 0


def cmd_print_config(args: argparse.Namespace) -> int:
    from .config import dump_yaml, load_config

    print(dump_yaml(load_config(_resolve_config(args.config), args.overrides)), end="")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .data.make_synthetic import write_synthetic

    out = write_synthetic(args.out, args.num_images, args.num_val, args.num_clips, args.clip_length,
                          args.height, args.width, args.seed)
    print(f"wrote the synthetic benchmark to {out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    import json as _json

    from .data.stats import dataset_stats, open_dataset

    ds = open_dataset(args.dataset, args.root, args.split, args.classes, on_error="skip")
    stats = dataset_stats(ds)
    if args.json:
        print(_json.dumps(stats))
    else:
        total = sum(stats["pixel_counts"].values()) or 1
        print(f"{args.dataset}: {stats['num_images']} images, {len(stats['class_names'])} classes")
        for name, n in stats["pixel_counts"].items():
            print(f"  {name:>16}  {n:>14,d}  {100 * n / total:6.2f}%")
        for p in stats["problems"]:
            print(f"  problem: {p['file']}: {p['problem']}")
    return 1 if args.strict and stats["problems"] else 0


def cmd_flow(args: argparse.Namespace) -> int:
    from .data.flow import compute_flows

    size = tuple(args.size) if args.size else None
    if args.dataset:
        from .data.flow import compute_dataset_flows

        stats = compute_dataset_flows(args.dataset, args.input, args.out, args.split, args.offset, args.method,
                                      size, args.workers, progress=not args.quiet)  # type: ignore[arg-type]
        print(f"flow t -> t-{args.offset} ({args.method}, DA-VSN int16 x10 names): {stats['written']} written, "
              f"{stats['skipped']} already there, {stats['frames']} annotated frames of {args.dataset} in "
              f"{args.input}; use data.<which>.flow_root={args.out}")
        return 0
    stats = compute_flows(args.input, args.out, args.offset, args.format, args.method, size,  # type: ignore[arg-type]
                          args.workers, progress=not args.quiet)
    print(f"flow t -> t-{args.offset} ({args.method}, {args.format}): {stats['written']} written, "
          f"{stats['skipped']} already there, {stats['frames']} frames in {args.input}; output in {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import ALL_METHODS, DemoOptions, run_demo

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    if methods and methods != ("all",):
        unknown = [m for m in methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown demo method '{unknown[0]}'; choose from {', '.join(ALL_METHODS)}")
    tracks = ("image", "video") if args.track == "both" else (args.track,)
    from .demo import auto_jobs

    jobs = auto_jobs() if args.jobs == 0 else args.jobs
    if jobs < 0:
        raise ValueError(f"--jobs must be 0 (auto) or a positive number, got {args.jobs}")
    opts = DemoOptions(Path(args.out), args.seeds, tracks, methods, args.quick, args.iterations, args.resume, jobs)
    if args.report_only:
        from .demo import report_only

        report_only(opts)
        return 0
    run_demo(opts)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="pipa", description="Unsupervised domain adaptive semantic segmentation (PiPa++).")
    p.add_argument("--version", action="version", version=f"pipa {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a method from a YAML config (torchrun for several GPUs)")
    t.add_argument("config", help="YAML file or preset name (e.g. synthetic)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.iterations=2000")
    t.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoint.pt")
    t.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept method/model/data settings that differ from the run's")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run folder or exported weights (mIoU, per-class IoU)")
    e.add_argument("path", help="run folder or folder with model.safetensors + config.json")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the run's config, e.g. data.val.root=...")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--confusion", action="store_true", help="also print the confusion matrix")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="segment images, frame folders or videos (label PNGs, colour frames, "
                                        "overlays, a video)")
    pr.add_argument("weights", help="a run folder, its best/, or exported weights (model.safetensors + config.json)")
    pr.add_argument("inputs", nargs="+", help="image files, folders of images or frames, video files")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--label-ids", nargs="?", const="auto", default=None, metavar="MAPPING",
                    help="label PNGs in the dataset's original ids instead of train ids (Cityscapes labelIds for "
                         "an official submission); MAPPING: a shipped mapping name (default: cityscapes_<K>)")
    pr.add_argument("--no-color", action="store_true", help="no colour-coded PNGs")
    pr.add_argument("--no-overlay", action="store_true", help="no overlays")
    pr.add_argument("--video", action="store_true", help="also write <name>_color.mp4 for each video or frame folder")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--no-protocol", action="store_true",
                    help="weights without a config.yaml: whole images at their own size")
    pr.add_argument("--device", default=None, help="cuda, cpu, ... (default: the GPU when there is one)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write inference weights (student or EMA teacher) from a checkpoint")
    ex.add_argument("run", help="run folder or checkpoint.pt")
    ex.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")
    ex.add_argument("--which", choices=["student", "teacher"], default="student")
    ex.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    ex.add_argument("--torch-export", action="store_true",
                    help="also write model.pt2, a torch.export graph: images (B, 3, H, W) in [0, 1] -> logits")
    ex.add_argument("--onnx", action="store_true",
                    help="also write model.onnx (input images, output logits; dynamic batch, height, width; "
                         "needs onnx and onnxscript, checked under onnxruntime when installed)")
    ex.add_argument("--example-size", type=int, nargs=2, metavar=("H", "W"), default=[256, 512],
                    help="the input size the graphs are traced on (the only size for a graph that cannot "
                         "keep a symbolic size, e.g. HRDA)")
    ex.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to the hub model repo REPO "
                    "(owner/name; created if missing; needs a login: huggingface-cli login)")
    ex.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    ex.add_argument("--program", type=int, nargs=2, metavar=("H", "W"),
                    help="--torch-export traced on H x W (kept from earlier versions)")
    ex.set_defaults(func=cmd_export)

    cm = sub.add_parser("convert-mit", help="official MiT ImageNet weights (mit_b5.pth) -> a folder for model.pretrained")
    cm.add_argument("src", help="an official mit_b*.pth (NVlabs/SegFormer; DAFormer/HRDA/MIC's pretrained/)")
    cm.add_argument("out", help="the folder to write (config.json + model.safetensors)")
    cm.set_defaults(func=cmd_convert_mit)

    pc = sub.add_parser("print-config", help="print the resolved config")
    pc.add_argument("config")
    pc.add_argument("overrides", nargs="*")
    pc.set_defaults(func=cmd_print_config)

    ms = sub.add_parser("make-synthetic", help="write the built-in benchmark to disk (folder layout)")
    ms.add_argument("out")
    ms.add_argument("--num-images", type=int, default=200, help="training images per domain")
    ms.add_argument("--num-val", type=int, default=50, help="validation images per domain")
    ms.add_argument("--num-clips", type=int, default=4, help="video clips per domain and split")
    ms.add_argument("--clip-length", type=int, default=4)
    ms.add_argument("--height", type=int, default=96)
    ms.add_argument("--width", type=int, default=192)
    ms.add_argument("--seed", type=int, default=0)
    ms.set_defaults(func=cmd_make_synthetic)

    ds = sub.add_parser("data-stats", help="class pixel counts and problems of a dataset (one JSON object with --json)")
    ds.add_argument("--dataset", required=True,
                    choices=["gta5", "cityscapes", "synthia", "synthia_seq", "viper", "cityscapes_seq", "folder", "synthetic"])
    ds.add_argument("--root", help="dataset folder in its original layout")
    ds.add_argument("--split", help="train | val (synthetic: source | target | val)")
    ds.add_argument("--classes", type=int, help="class set (e.g. 19, 16 or 13 for SYNTHIA; default: the benchmark's)")
    ds.add_argument("--json", action="store_true", help="print one JSON object")
    ds.add_argument("--strict", action="store_true", help="exit 1 when problems were found")
    ds.set_defaults(func=cmd_data_stats)

    fl = sub.add_parser("flow", help="backward optical flow t -> t-K of a frame folder or video (OpenCV, CPU)")
    fl.add_argument("input", help="a folder of frames (sorted by name), a video file, or with --dataset the dataset's root")
    fl.add_argument("--dataset", choices=["cityscapes_seq", "viper", "synthia_seq"],
                    help="INPUT is this dataset in its original layout: flows of its annotated frames, named and "
                         "encoded as its loader reads them from flow_root")
    fl.add_argument("--split", default="train", help="with --dataset: the split (Cityscapes-Seq, VIPER)")
    fl.add_argument("--out", required=True, help="output folder")
    fl.add_argument("--offset", type=int, default=1, help="K: flow from frame t to frame t-K")
    fl.add_argument("--format", choices=["npy", "davsn", "kitti"], default="npy",
                    help="npy: float32 (H, W, 2); davsn: int16 x10 (DA-VSN/TPS files); kitti: 16-bit PNG")
    fl.add_argument("--method", choices=["dis", "dis_fast", "farneback"], default="dis")
    fl.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize the flow to H x W (u, v rescaled)")
    fl.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    fl.add_argument("--quiet", action="store_true", help="no progress bar")
    fl.set_defaults(func=cmd_flow)

    d = sub.add_parser("demo", help="train every method on the built-in benchmark and report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seeds", type=int, default=1)
    d.add_argument("--track", choices=["image", "video", "both", "hires"], default="image",
                   help="hires: the high-resolution track (daformer, hrda, hrda+pipa at 192x384; not part of both)")
    d.add_argument("--methods", help="comma-separated subset of methods, or 'all' for the full ablation")
    d.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    d.add_argument("--iterations", type=int, help="override the iterations of every run")
    d.add_argument("--resume", action="store_true",
                   help="reuse runs in --out that finished with the same resolved config (an interrupted demo)")
    d.add_argument("--report-only", action="store_true", help="rewrite report.md from --out's results.json")
    d.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, one process each (0: auto, one per CPU core up to 4, 1 on a GPU); "
                        "each run's thread count (cores // jobs) is recorded in its config")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .core.io import first_line
    from .data.datasets import DatasetError

    try:
        return int(args.func(args))
    except (ConfigError, DatasetError, OSError, ValueError, RuntimeError, FloatingPointError) as exc:
        if os.environ.get("PIPA_DEBUG"):
            raise
        msg = first_line(exc)
        print(f"pipa: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
