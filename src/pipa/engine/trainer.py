"""One training loop for every method (run it plainly, or with ``torchrun`` for DDP).

    pipa train configs/synthetic.yaml train.iterations=2000
    torchrun --nproc_per_node 2 -m pipa train configs/synthetic.yaml

``assemble`` builds a :class:`Run` (datasets, model, method, optimiser, resume state, streams, side
jobs); ``train`` runs its loop. Rank 0 logs (tqdm / TensorBoard / metrics.jsonl) and writes
checkpoints; each rank gets its own seed (``train.seed + rank``) and its shard of every stream.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from .. import __version__
from ..config import Config, ConfigError, dump_yaml, git_revision
from ..core import dist as dist_utils
from ..core.rng import seed_everything, set_rng_state
from ..data.datasets import build_dataset
from ..methods import UDAMethod, build_method, method_terms
from ..models import build_segmentor
from .callbacks import (Checkpointer, Clock, Evaluator, Logger, NonfiniteGuard, Preempted, Progress, StopSignal,
                        progress_mode, say, write_skipped)
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, remove_stale_temporaries
from .schedule import lr_factor
from .streams import BatchStream, Streams


@dataclass
class TrainResult:
    """What a run ended with: the last evaluation, timing, and the best periodic evaluation."""

    miou: float
    per_class_iou: list[float]
    iterations: int
    train_seconds: float
    out_dir: str
    class_names: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    best_miou: float = float("nan")  # best on the target val split over the periodic evaluations (oracle selection)
    best_iteration: int = -1
    temporal_consistency: float | None = None  # clips with flow: evaluation/temporal.py, percent


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; under torchrun the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", dist_utils.local_rank())
    return torch.device("cpu")


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler). ``auto`` is fp32 like the reference recipes
    (on CUDA with TF32 matmuls and convolutions allowed); bf16/fp16 autocast only when asked for."""
    if amp == "auto":
        amp = "off"
    if amp == "off" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if amp == "bf16":
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type != "cuda":
            raise RuntimeError("train.amp=fp16 needs CUDA; use bf16 or off on the CPU")
        return torch.float16, True
    return None, False


def write_run_files(cfg: Config, out: Path) -> None:
    """``config.yaml`` (resolved, with version and git revision) and ``run.json`` into the run folder."""
    out.mkdir(parents=True, exist_ok=True)
    rev = git_revision()
    (out / "config.yaml").write_text(f"# pipa {__version__}, git {rev}\n" + dump_yaml(cfg))
    meta = {"git_revision": rev, "pipa_version": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "run.json").write_text(json.dumps(meta, indent=2))


@dataclass
class Run:
    """Everything one training run holds, assembled by :func:`assemble`."""

    cfg: Config
    device: torch.device
    world: int
    main: bool
    out: Path
    method: UDAMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    streams: Streams
    progress: Progress
    logger: Logger
    evaluator: Evaluator
    checkpointer: Checkpointer
    debug: Callable[[dict[str, torch.Tensor], int], None] | None  # debug image grids
    class_names: list[str]
    stop: StopSignal
    guard: NonfiniteGuard
    finite_every_step: bool  # train.finite_check resolved: read the guard every step (CPU) or when due

    def autocast(self) -> AbstractContextManager:
        """Autocast to ``train.amp``'s dtype (a no-op when it is off)."""
        dtype = self.amp_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's share of the step's loss (gradients add up)."""
        self.scaler.scale(loss / self.cfg.train.accumulate).backward()

    def check_finite(self, done: int, due: bool) -> None:
        """Raise the guard's error if a loss was not finite; read on the host only when ``due`` or
        when the guard reads every step (``train.finite_check``)."""
        if due or self.finite_every_step:
            err = self.guard.check(done, self.checkpointer.last_good())
            if err is not None:
                raise err

    def optimise(self) -> None:
        """Optional gradient clipping, optimiser and scheduler step; gradients cleared for the next."""
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def train(cfg: Config, resume: bool = False, progress: str = "auto", allow_changes: bool = False) -> TrainResult:
    """Train ``cfg.method`` and evaluate on ``cfg.data.val``. ``progress``: auto | bar | log | none.
    ``resume``: continue from the run folder's checkpoint (``allow_changes``: even if the method,
    model or data settings differ from the run's)."""
    run = assemble(cfg, resume, progress_mode(progress), allow_changes)
    method, total = run.method, cfg.train.iterations
    clock = Clock(run.progress)
    method.train()
    with run.stop:  # SIGTERM: finish the step, write a checkpoint, stop (Preempted)
        for it in range(run.progress.iteration, total):
            done = it + 1
            for micro in range(cfg.train.accumulate):  # gradients of the micro-batches add up
                batch = run.streams.next(run.device)
                with run.autocast():
                    loss, logs = method.step(batch, it, micro)
                run.guard.update(done, loss, logs)  # device ops only: no host synchronisation
                run.check_finite(done, due=False)  # CPU: before the optimiser step
                run.backward(loss)
            run.optimise()
            method.after_step(it)
            stop = run.stop.requested(run.world, run.device, done, cfg.train.log_interval)
            run.check_finite(done, due=run.logger.due(done) or run.evaluator.due(done) or run.checkpointer.due(done)
                             or stop)  # GPU: the weights may be poisoned, but are never written
            run.logger(done, loss, logs, run.optimizer.param_groups[0]["lr"])
            if run.debug is not None and done % cfg.train.debug_interval == 0:
                run.debug(method.debug, done)
            if run.evaluator.due(done):
                run.evaluator(done)
            if run.checkpointer.due(done) or stop:
                clock.lap()
                run.checkpointer(done)
                if run.stop.flag:
                    run.logger.close()
                    raise Preempted(f"stopped by SIGTERM after iteration {done}; checkpoint written to {run.out}: "
                                    "continue with --resume")
        clock.lap()
        run.logger.close()
        return finish(run)


def finish(run: Run) -> TrainResult:
    """The final evaluation, checkpoint and exported weights; the result of the run."""
    total = run.cfg.train.iterations
    res = run.evaluator(total)
    if run.world > 1:
        check_in_sync(run.method, run.main)
    run.checkpointer(total)
    if run.main:
        run.method.export_model().save_pretrained(run.out)
    dist_utils.barrier()
    p = run.progress
    return TrainResult(res.miou, res.per_class_iou, total, p.train_seconds, str(run.out), run.class_names,
                       res.confusion.tolist(), p.best_miou, p.best_iteration, res.temporal_consistency)


def assemble(cfg: Config, resume: bool, mode: str, allow_changes: bool = False) -> Run:
    """Datasets (indexing checks every file first), model, method, optimiser, resume, streams and
    side jobs of a run."""
    method_terms(cfg)  # the method's terms are checked before minutes of dataset indexing
    device = select_device(cfg.train.device)
    rank, world = dist_utils.init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.train.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    out, main, K, bars = Path(cfg.train.out_dir), rank == 0, cfg.model.num_classes, rank == 0 and mode == "bar"
    source = build_dataset(cfg.data.source, K, cfg.data.cache_dir, labelled=True, progress=bars)
    val = build_dataset(cfg.data.val, K, cfg.data.cache_dir, labelled=True, progress=bars)
    class_names = list(getattr(source, "class_names", [str(i) for i in range(K)]))
    if main:
        removed = remove_stale_temporaries(out) if out.is_dir() else []
        if removed:
            say(mode, f"[{out.name}] removed {len(removed)} partial checkpoint file(s) of a killed run")

    seed_everything(cfg.train.seed + rank)
    method = build_method(cfg, build_segmentor(cfg.model, class_names)).to(device)
    channels_last = apply_speed_settings(cfg, method, device)
    target = None
    if method.uses_target:
        if cfg.data.target is None:
            raise ValueError(f"method '{cfg.method.name}' needs data.target")
        target = build_dataset(cfg.data.target, K, cfg.data.cache_dir, labelled=False, progress=bars)
    if main:
        write_skipped(out, {"source": source, "target": target, "val": val}, mode)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        method.wrap_student(lambda m: DDP(m, device_ids=ids))

    o = cfg.optim
    fused = o.fused == "on" or (o.fused == "auto" and device.type == "cuda")
    optim = torch.optim.AdamW(method.param_groups(o.lr, o.head_lr_mult, o.weight_decay, o.decay_norms, o.layer_decay),
                              lr=o.lr,
                              betas=tuple(o.betas), weight_decay=o.weight_decay, **({"fused": True} if fused else {}))
    total = cfg.train.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda it: lr_factor(it, total, o.warmup_iters, o.warmup_ratio, o.poly_power))
    amp_dtype, use_scaler = amp_settings(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    parts = {"method": method, "optimizer": optim, "scheduler": sched, "scaler": scaler}
    progress, streams_state = restore(cfg, out, parts, resume, device, rank, world, main, allow_changes)

    streams = build_streams(cfg, method, source, target, streams_state, rank, world, out, class_names, mode, main,
                            channels_last)
    if main:
        write_run_files(cfg, out)
    logger = Logger(cfg, out, mode, progress.iteration, main)
    evaluator = Evaluator(cfg, method, val, device, amp_dtype, out, progress, logger, mode, main)
    checkpointer = Checkpointer(cfg, out / CHECKPOINT_NAME, parts, streams.state, progress, main)
    debug = None
    if main and cfg.train.debug_interval > 0:
        from ..viz import DebugImages

        debug = DebugImages(out / "debug", logger.writer, getattr(source, "palette", None), K)
    every_step = cfg.train.finite_check == "step" or (cfg.train.finite_check == "auto" and device.type == "cpu")
    return Run(cfg, device, world, main, out, method, optim, sched, scaler, amp_dtype, streams, progress, logger,
               evaluator, checkpointer, debug, class_names, StopSignal(), NonfiniteGuard(device), every_step)


def apply_speed_settings(cfg: Config, method: UDAMethod, device: torch.device) -> bool:
    """``train.checkpointing``, ``train.channels_last`` (returned, resolved: the batches follow it)
    and ``train.compile``; none of them changes what is computed beyond rounding."""
    t = cfg.train
    if t.checkpointing:
        encoder = method.model.encoder
        if not hasattr(encoder, "set_checkpointing"):
            raise ConfigError(f"train.checkpointing: the {cfg.model.backbone} encoder does not support it")
        encoder.set_checkpointing(True)
    channels_last = t.channels_last == "on" or (t.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if t.compile:
        method.compile_models()
    return channels_last


def restore(cfg: Config, out: Path, parts: dict, resume: bool, device: torch.device, rank: int, world: int,
            main: bool, allow_changes: bool = False) -> tuple[Progress, dict[str, list[int]]]:
    """Load ``checkpoint.pt`` into ``parts`` with ``resume``; refuse to overwrite one without it.
    Returns the progress and the stream states to continue from."""
    ckpt = out / CHECKPOINT_NAME
    progress, streams_state = Progress(), {}
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, device)
        check_resume_config(cfg, state["config"], state["iteration"], out, allow_changes, main)
        for name, part in parts.items():
            part.load_state_dict(state[name])
        apply_optim_settings(parts["optimizer"], parts["scheduler"], cfg)  # allowed changes take effect
        progress = Progress(state["iteration"], state["best_miou"], int(state.get("best_iteration", -1)),
                            state["train_seconds"])
        streams_state = state["streams"]
        if world == 1:
            set_rng_state(state["rng"])
        else:
            seed_everything(cfg.train.seed + rank + 1_000_003 * progress.iteration)
        if main:
            print(f"resumed from {ckpt} at iteration {progress.iteration}", flush=True)
    elif resume and main:
        print(f"no checkpoint in {out}; starting from scratch", flush=True)
    elif ckpt.is_file() and not cfg.train.overwrite:
        raise FileExistsError(f"{ckpt} exists: continue it with --resume, or start again with "
                              "train.overwrite=true (or another train.out_dir)")
    if main:
        trim_metrics(out / "metrics.jsonl", progress.iteration)
    return progress, streams_state


def apply_optim_settings(optim: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                         cfg: Config) -> None:
    """After loading a checkpoint: learning rates, betas and weight decay from ``cfg`` (the loaded
    optimiser state carries the old run's), the schedule continuing at its iteration."""
    o = cfg.optim
    base = [(o.lr if str(g.get("name", "")).startswith("encoder") else o.lr * o.head_lr_mult) * g.get("lr_scale", 1.0)
            for g in optim.param_groups]
    sched.base_lrs = base  # type: ignore[attr-defined]
    for g, lr, f in zip(optim.param_groups, base, sched.lr_lambdas):  # type: ignore[attr-defined]
        g["initial_lr"], g["lr"] = lr, lr * f(sched.last_epoch)
        no_decay = str(g.get("name", "")).endswith("_norm") and not o.decay_norms
        g["betas"], g["weight_decay"] = tuple(o.betas), 0.0 if no_decay else o.weight_decay


# settings that do not change what is trained (where and how fast it runs, what is printed)
NEUTRAL_KEYS = ("train.out_dir", "train.overwrite", "train.threads", "train.device", "train.log_interval",
                "train.compile", "train.channels_last", "train.checkpointing", "train.finite_check", "optim.fused",
                "train.shared_encoder",
                "train.debug_interval", "train.eval_batch_size", "train.eval_interval", "train.checkpoint_interval",
                "data.num_workers", "data.cache_dir")
FIXED_SECTIONS = ("method.", "model.", "data.", "optim.decay_norms")  # a change here makes it another run


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(cfg: Config, saved: dict, iteration: int, out: Path, allow_changes: bool, main: bool) -> None:
    """Compare the resumed run's config with the checkpoint's: method, model and data changes are
    refused (unless ``allow_changes``); every change made is appended to ``config_changes.jsonl``."""
    from ..config import to_dict

    old, new = _flat(saved), _flat(to_dict(cfg))
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in NEUTRAL_KEYS}
    fixed = [k for k in changed if k.startswith(FIXED_SECTIONS)]
    if fixed and not allow_changes:
        k = fixed[0]
        raise ConfigError(f"--resume with a changed config: '{k}' was {changed[k][0]!r}, now {changed[k][1]!r}"
                          f"{f' (and {len(fixed) - 1} more method/model/data keys)' if len(fixed) > 1 else ''}; "
                          "resume with the run's config, start a new train.out_dir, or pass --allow-changes")
    if changed and main:
        with open(out / "config_changes.jsonl", "a") as fh:
            fh.write(json.dumps({"resumed_at": iteration, "changes": {k: list(v) for k, v in changed.items()}}) + "\n")
        print(f"resuming with {len(changed)} changed setting(s) (logged in config_changes.jsonl): "
              + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:5]), flush=True)


def trim_metrics(path: Path, iteration: int) -> None:
    """Keep the metrics rows up to ``iteration`` (a run resumed there rewrites what came after; a
    fresh start keeps none)."""
    if not path.is_file():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    kept = [r for r in rows if _row_iteration(r) <= iteration] if iteration > 0 else []
    if len(kept) != len(rows):
        path.write_text("".join(r + "\n" for r in kept))


def _row_iteration(row: str) -> int:
    try:
        return int(json.loads(row).get("iteration", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable row (a write cut by a kill) is dropped


def build_streams(cfg: Config, method: UDAMethod, source: Dataset, target: Dataset | None,
                  state: dict[str, list[int]], rank: int, world: int, out: Path, class_names: list[str],
                  mode: str, main: bool, channels_last: bool = False) -> Streams:
    """Source stream (by rare class sampling when the method asks for it) and target stream."""
    def stream(ds: Dataset, key: str, salt: int, rcs: object = None) -> BatchStream:
        ep, off = state.get(key, [0, 0])
        return BatchStream(ds, cfg.data.batch_size, cfg.train.seed * 1000 + salt, rank, world, cfg.data.num_workers,
                           ep, off, rcs, pin_memory=torch.cuda.is_available() and cfg.train.device != "cpu")

    rcs = None
    if method.rare_class_sampling:
        from ..uda.rcs import RareClassSampler, cached_class_counts

        K = cfg.model.num_classes
        counts = cached_class_counts(source, K, out / "class_stats.json", repr(cfg.data.source))
        rcs = RareClassSampler(counts, cfg.method.rcs.temperature, cfg.method.rcs.min_pixels, cfg.method.rcs.min_crop_ratio)
        if main:
            probs = ", ".join(f"{n} {p:.2f}" for n, p in zip(class_names, rcs.probs.tolist()))
            say(mode, f"[{out.name}] rare class sampling: {probs}")
    streams, flips = {"source": stream(source, "source", 0, rcs)}, {"source": cfg.data.source.hflip}
    if target is not None and cfg.data.target is not None:
        streams["target"], flips["target"] = stream(target, "target", 1), cfg.data.target.hflip
    return Streams(streams, flips, channels_last)


def check_in_sync(method: torch.nn.Module, main: bool) -> None:
    """DDP keeps replicas identical; verify it (a diverged rank is a bug worth stopping for): every
    parameter (student, teacher, training heads) and the contrastive memory, which is all-gathered
    before each push. Batch-norm running statistics are left out: each rank updates them with its
    own batch after DDP's broadcast."""
    tensors = [p for p in method.parameters()]
    tensors += [b for name, b in method.named_buffers() if ".memory." in f".{name}"]
    vec = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    mine = torch.stack([vec.sum(), (vec * torch.arange(vec.numel(), device=vec.device) % 7).sum()])
    lo, hi = mine.clone(), mine.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    if not torch.allclose(lo, hi, rtol=1e-5, atol=1e-5):
        raise RuntimeError("DDP replicas diverged: parameters or memory differ between ranks")
    if main:
        print(f"ranks in sync ({dist_utils.world_size()} replicas)", flush=True)
