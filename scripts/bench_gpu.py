"""The training step against the hardware (a benchmark, not a test).

    PYTHONPATH=src python scripts/bench_gpu.py                 # MiT-B5, 512x512, batch 2+2, on CUDA
    PYTHONPATH=src python scripts/bench_gpu.py --tiny          # a tiny MiT on the CPU (what the test runs)
    PYTHONPATH=src python scripts/bench_gpu.py --methods daformer,pipa --settings tf32,bf16,bf16+ckpt

For each method (the real presets ``gta2cs_daformer`` / ``gta2cs_pipa`` / MIC / ``gta2cs_hrda``
(``hrda``, ``hrda_pipa``, ``mic_hrda``: 1024x1024 crops), random weights,
``model.pretrained=null``) and each setting, runs the real method step (``UDAMethod.step``, backward,
fused AdamW, EMA update, the non-finite guard) on random 512x512 inputs with blocky random labels,
all terms active, and prints one Markdown table:

- ms/step: median over ``--steps`` after ``--warmup`` steps (each timed between two device syncs);
- TFLOP/s: the step's model FLOPs (``torch.utils.flop_counter``, counted once per method in eager
  mode; recomputation by checkpointing is not counted) divided by the median time;
- peak GB: ``torch.cuda.max_memory_allocated`` over the timed steps;
- syncs/step: host synchronisations of one step, seen by ``torch.cuda.set_sync_debug_mode`` (CUDA)
  and, in brackets, the Python-visible ones counted by :class:`pipa.core.syncs.SyncCounter`;
- ATen ops/step: operations dispatched by one step (each one kernel launch or more on a GPU). On
  the H100 the MiT-B5 step was bound by this count, not by arithmetic (README), so it is the
  figure to watch on a machine without a GPU.

Settings: ``tf32`` (fp32 with TF32 matmuls: the presets' default), ``bf16`` (autocast), ``+ckpt``
(activation checkpointing of the encoder), ``+compile`` (torch.compile of the segmentor passes),
``+separate`` (source and mixed batches in two encoder passes, ``train.shared_encoder=false``).
``--json FILE`` also writes the rows as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipa.config import load_config  # noqa: E402
from pipa.core.syncs import SyncCounter  # noqa: E402
from pipa.engine.callbacks import NonfiniteGuard  # noqa: E402
from pipa.engine.trainer import amp_settings, apply_speed_settings  # noqa: E402
from pipa.methods import build_method  # noqa: E402
from pipa.models import build_segmentor  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "pipa" / "configs"
METHODS = {  # name -> (preset, overrides)
    "daformer": ("gta2cs_daformer.yaml", []),
    "pipa": ("gta2cs_pipa.yaml", []),  # DAFormer + PiPa++ (pixel, patch, memory)
    "mic": ("gta2cs_daformer.yaml", ["method.name=mic"]),
    "mic_pipa": ("gta2cs_pipa.yaml", ["method.pipa.base=mic"]),
    "hrda": ("gta2cs_hrda.yaml", []),  # 1024x1024 crops, context 512 + detail 512
    "hrda_pipa": ("gta2cs_hrda_pipa.yaml", []),
    "mic_hrda": ("gta2cs_mic_hrda.yaml", []),
}
TINY = ["model.backbone=mit_tiny", "model.decoder_channels=64", "method.pipa.embed_dim=32",
        "method.pipa.memory.size_per_class=64"]


def make_batch(B: int, H: int, W: int, K: int, device: torch.device, seed: int = 0) -> dict:
    """Random images in [0, 1], labels in 32-px blocks of random classes (cells of one class, as in
    real scenes), and a rare-class-sampling class per source image."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, K, (B, -(-H // 32), -(-W // 32)), generator=g)
    label = blocks.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :H, :W]
    src = {"image": torch.rand(B, 3, H, W, generator=g), "label": label, "rcs_class": label[:, 0, 0].clone()}
    tgt = {"image": torch.rand(B, 3, H, W, generator=g)}
    return {k: {n: t.to(device) for n, t in v.items()} for k, v in {"source": src, "target": tgt}.items()}


def build(method: str, setting: str, device: torch.device, tiny: bool) -> tuple:
    preset, ov = METHODS[method]
    ov = [*ov, "model.pretrained=null", f"train.compile={'+compile' in setting}",
          f"train.checkpointing={'+ckpt' in setting}", f"train.shared_encoder={'+separate' not in setting}", f"train.amp={'bf16' if setting.startswith('bf16') else 'auto'}"]
    cfg = load_config(CONFIGS / preset, ov + (TINY if tiny else []))
    torch.manual_seed(0)
    m = build_method(cfg, build_segmentor(cfg.model)).to(device)
    apply_speed_settings(cfg, m, device)
    o = cfg.optim
    opt = torch.optim.AdamW(m.param_groups(o.lr, o.head_lr_mult, o.weight_decay, o.decay_norms), lr=o.lr,
                            weight_decay=o.weight_decay, fused=True)
    amp_dtype, _ = amp_settings(cfg.train.amp, device)
    return cfg, m, opt, amp_dtype


def step(m, opt, batch: dict, it: int, amp_dtype, guard: NonfiniteGuard, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss, logs = m.step(batch, it)
    guard.update(it + 1, loss, logs)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    m.after_step(it)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(m, opt, batch, amp_dtype, guard, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step(m, opt, batch, 50_000, amp_dtype, guard, device)
    return float(fc.get_total_flops())


def count_ops(m, opt, batch, it, amp_dtype, guard, device) -> int:
    """ATen operations dispatched by one step: on a GPU each is a kernel launch or more, so a step of
    small kernels is bound by this count (the CPU's dispatch time), not by the arithmetic."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step(m, opt, batch, it, amp_dtype, guard, device)
    return Count.n


def cuda_syncs(m, opt, batch, it, amp_dtype, guard, device) -> int:
    """Synchronising CUDA calls of one step, as torch.cuda.set_sync_debug_mode reports them."""
    if device.type != "cuda":
        return -1
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(m, opt, batch, it, amp_dtype, guard, device)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def bench(method: str, setting: str, device: torch.device, tiny: bool, steps: int, warmup: int,
          flops: dict[str, float], size: int = 0) -> dict:
    cfg, m, opt, amp_dtype = build(method, setting, device, tiny)
    H, W = cfg.data.source.crop or [512, 512]
    if tiny or size:
        H, W = size or 64, size or 64
    batch = make_batch(cfg.data.batch_size, H, W, cfg.model.num_classes, device)
    guard = NonfiniteGuard(device)
    m.train()
    it0 = 10_000  # past every term's start iteration: the full step
    t0 = time.perf_counter()
    for k in range(warmup):
        step(m, opt, batch, it0 + k, amp_dtype, guard, device)
    sync(device)
    warm_s = time.perf_counter() - t0
    if method not in flops and "+compile" not in setting:
        flops[method] = count_flops(m, opt, batch, amp_dtype, guard, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k in range(steps):
        sync(device)
        t = time.perf_counter()
        step(m, opt, batch, it0 + warmup + k, amp_dtype, guard, device)
        sync(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    with SyncCounter() as counter:
        step(m, opt, batch, it0 + warmup + steps, amp_dtype, guard, device)
    n_cuda = cuda_syncs(m, opt, batch, it0 + warmup + steps + 1, amp_dtype, guard, device)
    n_ops = count_ops(m, opt, batch, it0 + warmup + steps + 2, amp_dtype, guard, device) if "+compile" not in setting else -1
    err = guard.check(0, "")
    med = statistics.median(times)
    fl = flops.get(method, float("nan"))
    return {"method": method, "setting": setting, "ms": med * 1000, "tflops": fl / med / 1e12, "peak_gb": peak,
            "cuda_syncs": n_cuda, "python_syncs": counter.total, "aten_ops": n_ops, "warmup_s": warm_s, "finite": err is None,
            "gflop_per_step": fl / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny MiT at 64x64 on the CPU (the test's run)")
    ap.add_argument("--methods", default="daformer,pipa,mic")
    ap.add_argument("--settings", default="tf32,bf16,bf16+ckpt,tf32+ckpt,bf16+compile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0, help="seconds: skip the remaining rows once spent (0: none)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--size", type=int, default=0, help="square input size instead of the preset's crop (e.g. 64 to "
                    "count a MiT-B5 step's ATen ops quickly on the CPU)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or args.cpu or not torch.cuda.is_available() else "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {'tiny MiT 64x64' if args.tiny else 'MiT-B5 512x512'}, "
          f"batch 2 source + 2 target", flush=True)
    flops: dict[str, float] = {}
    rows, start = [], time.perf_counter()
    for method in args.methods.split(","):
        for setting in args.settings.split(","):
            if args.budget and time.perf_counter() - start > args.budget:
                print(f"skipped {method} {setting}: --budget spent", flush=True)
                continue
            try:
                row = bench(method, setting, device, args.tiny, args.steps, args.warmup, flops, args.size)
            except Exception as exc:  # a row that fails (compile, memory) is reported, the others still run
                row = {"method": method, "setting": setting, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n{name}, torch {torch.__version__}")
    print("| method | setting | ms/step | TFLOP/s | peak GB | syncs/step (Python) | ATen ops/step | warm-up s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['setting']} | failed: {r['error']} | | | | | |")
            continue
        print(f"| {r['method']} | {r['setting']} | {r['ms']:.1f} | {r['tflops']:.3g} | {r['peak_gb']:.2f} | "
              f"{r['cuda_syncs']} ({r['python_syncs']}) | {r['aten_ops']} | {r['warmup_s']:.1f} |")


if __name__ == "__main__":
    main()
