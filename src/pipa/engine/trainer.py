"""One training loop for every method (run it plainly, or with ``torchrun`` for DDP).

    pipa train configs/synthetic.yaml train.iterations=2000
    torchrun --nproc_per_node 2 -m pipa train configs/synthetic.yaml

Rank 0 logs (tqdm / TensorBoard / metrics.jsonl) and writes checkpoints; each rank gets its own
seed (``train.seed + rank``) and its shard of every batch stream (``DistributedSampler``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from .. import __version__
from ..config import Config, dump_yaml, git_revision, to_dict
from ..data.datasets import build_dataset
from ..evaluation.evaluate import EvalResult, evaluate
from ..methods import build_method
from ..models import build_segmentor
from . import distributed as dist_utils
from .checkpoint import CHECKPOINT_NAME, FORMAT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .schedule import lr_factor


@dataclass
class TrainResult:
    miou: float
    per_class_iou: list[float]
    iterations: int
    train_seconds: float
    out_dir: str
    class_names: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    best_miou: float = float("nan")  # best on the target val split over the periodic evaluations (oracle selection)
    best_iteration: int = -1


class BatchStream:
    """Endless, resumable stream of batches: a ``DistributedSampler`` permutation per epoch
    (seeded, so every rank agrees), cut into batches; ``state()`` = (epoch, batches taken)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world: int,
                 num_workers: int = 0, epoch: int = 0, offset: int = 0, rcs: Any = None) -> None:
        if len(dataset) < batch_size * world:  # type: ignore[arg-type]
            raise ValueError(f"dataset of {len(dataset)} items is smaller than one batch ({batch_size} x {world} ranks)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.epoch, self.offset = epoch, offset
        self.rcs = rcs  # a RareClassSampler: draw (image, class) pairs instead of a permutation
        self._it: Iterator | None = None

    def _start(self) -> None:
        sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        idx = list(sampler)
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        # its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from an uninterrupted one
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self._it = iter(DataLoader(self.dataset, batch_sampler=batches[self.offset :], num_workers=self.num_workers,
                                   generator=gen))

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.rcs is not None:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank * 104_729 + self.offset)
            idx, classes = self.rcs.sample(self.batch_size, gen)
            batch = default_collate([self.dataset[i] for i in idx])
            batch["rcs_class"] = torch.tensor(classes)
            self.offset += 1
            return batch
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.offset, self._it = self.epoch + 1, 0, None
            return next(self)
        self.offset += 1
        return batch

    def state(self) -> list[int]:
        return [self.epoch, self.offset]


def _hflip(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flip a random half of the batch left-right (flow: mirror and negate u)."""
    b = batch["image"].shape[0]
    flip = torch.rand(b) < 0.5
    out = dict(batch)
    for k, v in batch.items():
        if not torch.is_tensor(v) or v.dim() < 3:
            continue
        f = v.flip(-1)
        if k == "flow":
            f = f * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        m = flip.view(-1, *([1] * (v.dim() - 1)))
        out[k] = torch.where(m, f, v)
    return out


def select_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device("cpu")


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type != "cuda":
            raise RuntimeError("train.amp=fp16 needs CUDA; use bf16 or off on the CPU")
        return torch.float16, True
    return None, False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def write_run_files(cfg: Config, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rev = git_revision()
    (out / "config.yaml").write_text(f"# pipa {__version__}, git {rev}\n" + dump_yaml(cfg))
    meta = {"git_revision": rev, "pipa_version": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "run.json").write_text(json.dumps(meta, indent=2))


def train(cfg: Config, resume: bool = False, progress: str = "auto") -> TrainResult:
    """Train ``cfg.method`` and evaluate on ``cfg.data.val``. ``progress``: auto | bar | log | none."""
    device = select_device(cfg.train.device)
    rank, world = dist_utils.init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.train.out_dir)
    main = rank == 0
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "log"
    bars = main and progress == "bar"

    # data (indexing checks every file before anything trains)
    K = cfg.model.num_classes
    source = build_dataset(cfg.data.source, K, cfg.data.cache_dir, labelled=True, progress=bars)
    val = build_dataset(cfg.data.val, K, cfg.data.cache_dir, labelled=True, progress=bars)
    class_names = list(getattr(source, "class_names", [str(i) for i in range(K)]))

    seed_everything(cfg.train.seed + rank)
    model = build_segmentor(cfg.model, class_names)
    method = build_method(cfg, model).to(device)
    target = None
    if method.uses_target:
        if cfg.data.target is None:
            raise ValueError(f"method '{cfg.method.name}' needs data.target")
        target = build_dataset(cfg.data.target, K, cfg.data.cache_dir, labelled=False, progress=bars)

    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        method.wrap_student(lambda m: DDP(m, device_ids=ids))

    groups = method.param_groups(cfg.optim.lr, cfg.optim.head_lr_mult)
    optim = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    total, o = cfg.train.iterations, cfg.optim
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda it: lr_factor(it, total, o.warmup_iters, o.warmup_ratio, o.poly_power))
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start, best, elapsed, best_it = 0, float("nan"), 0.0, -1
    streams_state: dict[str, list[int]] = {}
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, device)
        method.load_state_dict(state["method"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, best, elapsed = state["iteration"], state["best_miou"], state["train_seconds"]
        best_it = int(state.get("best_iteration", -1))
        streams_state = state["streams"]
        if world == 1:
            set_rng_state(state["rng"])
        else:
            seed_everything(cfg.train.seed + rank + 1_000_003 * start)
        if main:
            print(f"resumed from {ckpt_path} at iteration {start}", flush=True)
    elif resume and main:
        print(f"no checkpoint in {out}; starting from scratch", flush=True)
    elif ckpt_path.is_file() and not cfg.train.overwrite:
        raise FileExistsError(f"{ckpt_path} exists: continue it with --resume, or start again with "
                              "train.overwrite=true (or another train.out_dir)")
    if start == 0 and main and (out / "metrics.jsonl").is_file():
        (out / "metrics.jsonl").unlink()  # a fresh start: the old metrics describe another run

    def stream(ds: Dataset, key: str, salt: int, rcs: Any = None) -> BatchStream:
        ep, off = streams_state.get(key, [0, 0])
        return BatchStream(ds, cfg.data.batch_size, cfg.train.seed * 1000 + salt, rank, world, cfg.data.num_workers,
                           ep, off, rcs)

    rcs = None
    if getattr(method, "rare_class_sampling", False):
        from ..uda.rcs import RareClassSampler, cached_class_counts

        counts = cached_class_counts(source, K, out / "class_stats.json", repr(cfg.data.source))
        rcs = RareClassSampler(counts, cfg.method.rcs.temperature, cfg.method.rcs.min_pixels)
        if main:
            probs = ", ".join(f"{n} {p:.2f}" for n, p in zip(class_names, rcs.probs.tolist()))
            _say(progress, f"[{out.name}] rare class sampling: {probs}")
    streams = {"source": stream(source, "source", 0, rcs)}
    flips = {"source": cfg.data.source.hflip}
    if target is not None and cfg.data.target is not None:
        streams["target"] = stream(target, "target", 1)
        flips["target"] = cfg.data.target.hflip

    writer = None
    if main:
        write_run_files(cfg, out)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))

    def checkpoint(it: int) -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "format_version": FORMAT_VERSION, "iteration": it, "method": method.state_dict(),
            "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "streams": {k: s.state() for k, s in streams.items()}, "best_miou": best,
            "best_iteration": best_it,
            "train_seconds": elapsed, "config": to_dict(cfg),
        })

    def run_eval(it: int) -> EvalResult:
        nonlocal best, best_it
        res = evaluate(method.export_model(), val, K, device, cfg.train.eval_batch_size, amp_dtype, protocol=cfg.eval)
        if main:
            improved = math.isnan(best) or res.miou > best
            best = res.miou if improved else best
            best_it = it if improved else best_it
            if improved:
                method.export_model().save_pretrained(out / "best")
            if writer is not None:
                writer.add_scalar("val/mIoU", res.miou, it)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"iteration": it, "miou": res.miou, "reported": res.subsets,
                                     "per_class_iou": _nan_none(res.per_class_iou)}) + "\n")
            _say(progress, f"[{out.name}] it {it}: target val mIoU {res.miou:.2f}")
        return res

    debug = None
    if main and cfg.train.debug_interval > 0:
        from ..viz import DebugImages

        debug = DebugImages(out / "debug", writer, getattr(source, "palette", None), K)
    bar = None
    if main and progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=cfg.method.name, dynamic_ncols=True)
    method.train()
    res: EvalResult | None = None
    t0 = time.perf_counter()
    for it in range(start, total):
        batch = {}
        for k, s in streams.items():
            b = next(s)
            batch[k] = _to(_hflip(b) if flips[k] else b, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, logs = method.step(batch, it)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {it}; the last checkpoint in {out} is intact")
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.optim.grad_clip)
        scaler.step(optim)
        scaler.update()
        sched.step()
        method.after_step(it)
        done = it + 1
        if main and (done % cfg.train.log_interval == 0 or done == total):
            logs = {"loss/total": float(loss.detach()), **logs, "lr": optim.param_groups[0]["lr"]}
            if writer is not None:
                for k, v in logs.items():
                    writer.add_scalar(k, v, done)
            if progress == "log":
                _say(progress, f"[{out.name}] it {done}/{total} loss {logs['loss/total']:.4f}")
        if main and debug is not None and done % cfg.train.debug_interval == 0:
            debug(getattr(method, "debug", {}), done)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if cfg.train.eval_interval > 0 and done % cfg.train.eval_interval == 0 and done < total:
            run_eval(done)
        if cfg.train.checkpoint_interval > 0 and done % cfg.train.checkpoint_interval == 0 and done < total:
            elapsed_now = elapsed + time.perf_counter() - t0
            elapsed, t0 = elapsed_now, time.perf_counter()
            checkpoint(done)
    elapsed += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    res = run_eval(total)
    if world > 1:
        _check_in_sync(method, main)
    checkpoint(total)
    if main:
        method.export_model().save_pretrained(out)
        if writer is not None:
            writer.close()
    dist_utils.barrier()
    return TrainResult(res.miou, res.per_class_iou, total, elapsed, str(out), class_names,
                       res.confusion.tolist(), best, best_it)


def _check_in_sync(method: torch.nn.Module, main: bool) -> None:
    """DDP keeps replicas identical; verify it (a diverged rank is a bug worth stopping for): every
    parameter (student, teacher, training heads) and the contrastive memory, which is all-gathered
    before each push. Batch-norm running statistics are left out: each rank updates them with its
    own batch after DDP's broadcast."""
    tensors = [p for p in method.parameters()]
    tensors += [b for name, b in method.named_buffers() if name.startswith("memory.")]
    vec = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    mine = torch.stack([vec.sum(), (vec * torch.arange(vec.numel(), device=vec.device) % 7).sum()])
    lo, hi = mine.clone(), mine.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    if not torch.allclose(lo, hi, rtol=1e-5, atol=1e-5):
        raise RuntimeError("DDP replicas diverged: parameters or memory differ between ranks")
    if main:
        print(f"ranks in sync ({dist_utils.world_size()} replicas)", flush=True)


def _say(progress: str, text: str) -> None:
    if progress != "none":
        print(text, flush=True)


def _nan_none(xs: list[float]) -> list[float | None]:
    return [None if math.isnan(x) else round(x, 4) for x in xs]

