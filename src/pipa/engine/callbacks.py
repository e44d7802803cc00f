"""Side jobs of the training loop, each a small object called after every step: logging (progress
bar, TensorBoard), debug image grids, periodic evaluation with best-model keeping, checkpoints.
They run on rank 0 only, except evaluation (every rank evaluates its shard)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..config import Config, to_dict
from ..core.tensors import read_scalars
from ..evaluation.evaluate import EvalResult, evaluate
from ..methods import UDAMethod
from .checkpoint import FORMAT_VERSION, save_checkpoint


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    iteration: int = 0
    best_miou: float = float("nan")  # best target-val mIoU over the periodic evaluations (oracle selection)
    best_iteration: int = -1
    train_seconds: float = 0.0


class Clock:
    """Wall time of the training loop: ``lap()`` adds the time since the last lap to
    ``progress.train_seconds`` (a resumed run continues the count)."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.t0 = progress, time.perf_counter()

    def lap(self) -> None:
        """Add the time since the last lap to ``train_seconds``."""
        now = time.perf_counter()
        self.progress.train_seconds += now - self.t0
        self.t0 = now


def say(progress: str, text: str) -> None:
    """Print a status line unless progress output is off."""
    if progress != "none":
        print(text, flush=True)


class Logger:
    """Every ``log_interval`` steps (and the last): scalars to TensorBoard and, in ``log`` mode, a
    line to stdout; in ``bar`` mode a tqdm bar updated every step."""

    def __init__(self, cfg: Config, out: Path, progress: str, start: int, main: bool) -> None:
        self.interval, self.total, self.name, self.progress = cfg.train.log_interval, cfg.train.iterations, out.name, progress
        self.writer = None
        self.bar = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
            if progress == "bar":
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=start, desc=cfg.method.name, dynamic_ncols=True)
        self.main = main

    def due(self, done: int) -> bool:
        """Is ``done`` a logging step (every ``log_interval`` and the last)?"""
        return done % self.interval == 0 or done == self.total

    def __call__(self, done: int, loss: torch.Tensor, logs: dict[str, torch.Tensor | float], lr: float) -> None:
        """The step's logs stay on the device; they are read (one host read for all) only when due."""
        if self.main and self.due(done):
            values = read_scalars({"loss/total": loss, **logs, "lr": lr})
            if self.writer is not None:
                for k, v in values.items():
                    self.writer.add_scalar(k, v, done)
            if self.progress == "log":
                say(self.progress, f"[{self.name}] it {done}/{self.total} loss {values['loss/total']:.4f}")
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{values['loss/total']:.3f}")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Close the progress bar and flush TensorBoard."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class Evaluator:
    """Target-val evaluation: every ``eval_interval`` steps and at the end. Rank 0 keeps the best
    weights in ``best/``, appends ``metrics.jsonl`` and logs ``val/mIoU``."""

    def __init__(self, cfg: Config, method: UDAMethod, val: Dataset, device: torch.device,
                 amp_dtype: torch.dtype | None, out: Path, progress: Progress, logger: Logger, mode: str,
                 main: bool) -> None:
        self.cfg, self.method, self.val, self.device, self.amp_dtype = cfg, method, val, device, amp_dtype
        self.out, self.state, self.logger, self.mode, self.main = out, progress, logger, mode, main

    def due(self, done: int) -> bool:
        """Is a periodic evaluation due after ``done`` steps (the final one is run by the trainer)?"""
        every = self.cfg.train.eval_interval
        return every > 0 and done % every == 0 and done < self.cfg.train.iterations

    def __call__(self, it: int) -> EvalResult:
        model = self.method.export_model()
        res = evaluate(model, self.val, self.cfg.model.num_classes, self.device, self.cfg.train.eval_batch_size,
                       self.amp_dtype, protocol=self.cfg.eval)
        if not self.main:
            return res
        if math.isnan(self.state.best_miou) or res.miou > self.state.best_miou:
            self.state.best_miou, self.state.best_iteration = res.miou, it
            model.save_pretrained(self.out / "best")
        if self.logger.writer is not None:
            self.logger.writer.add_scalar("val/mIoU", res.miou, it)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"iteration": it, "miou": res.miou, "reported": res.subsets,
                                 "per_class_iou": nan_none(res.per_class_iou)}) + "\n")
        say(self.mode, f"[{self.out.name}] it {it}: target val mIoU {res.miou:.2f}")
        return res


class Checkpointer:
    """Rank 0 writes ``checkpoint.pt`` atomically every ``checkpoint_interval`` steps and at the end:
    method, optimiser, scheduler, scaler, RNG and stream states, progress and the config."""

    def __init__(self, cfg: Config, path: Path, parts: dict[str, Any], streams_state: Callable[[], Any],
                 progress: Progress, main: bool) -> None:
        self.cfg, self.path, self.parts, self.streams_state = cfg, path, parts, streams_state
        self.progress, self.main = progress, main

    def due(self, done: int) -> bool:
        """Is a periodic checkpoint due after ``done`` steps (the final one is written by the trainer)?"""
        every = self.cfg.train.checkpoint_interval
        return every > 0 and done % every == 0 and done < self.cfg.train.iterations

    def __call__(self, it: int) -> None:
        if not self.main:
            return
        from ..core.rng import rng_state

        bad = nonfinite_tensors(self.parts["method"].state_dict())
        if bad:  # never replace a good checkpoint with poisoned weights
            raise FloatingPointError(f"non-finite values in {len(bad)} tensors of the training state at iteration {it} "
                                     f"(first: {', '.join(bad[:3])}); {self.last_good()}")
        p = self.progress
        save_checkpoint(self.path, {
            "format_version": FORMAT_VERSION, "iteration": it,
            **{name: part.state_dict() for name, part in self.parts.items()},
            "rng": rng_state(), "streams": self.streams_state(), "best_miou": p.best_miou,
            "best_iteration": p.best_iteration, "train_seconds": p.train_seconds, "config": to_dict(self.cfg),
        })


    def last_good(self) -> str:
        """What is left to resume from, in words (for error messages)."""
        if not self.path.is_file():
            return "no checkpoint was written yet"
        return f"the last checkpoint ({self.path}) is intact: fix the cause (a lower optim.lr?) and continue with --resume"


class NonfiniteGuard:
    """Watches the loss without a host synchronisation per step: ``update`` keeps, on the device,
    the first (1-based) iteration whose loss was not finite and the loss terms of that step;
    ``check`` reads them on the host (every step on the CPU, every ``log_interval`` and before each
    checkpoint or evaluation on a GPU: ``train.finite_check``) and returns the error to raise."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.terms: dict[str, torch.Tensor] = {}

    def update(self, iteration: int, loss: torch.Tensor, logs: dict[str, torch.Tensor | float]) -> None:
        """Record ``iteration`` (1-based) if its loss is the first non-finite one (device ops only)."""
        new = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(new, iteration, self.first)
        for k, v in logs.items():
            if k.startswith("loss/"):
                v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v)).to(new.device, non_blocking=True)
                self.terms[k] = torch.where(new, v, self.terms.get(k, torch.zeros((), device=new.device)))

    def check(self, done: int, last_good: str) -> FloatingPointError | None:
        """None while every loss was finite; else the one-line error (the host read happens here)."""
        values = read_scalars({"first": self.first, **self.terms})
        first = int(values.pop("first"))
        if first < 0:
            return None
        bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
        which = f" ({', '.join(bad)})" if bad else ""
        when = ("stopped before the optimiser step" if first == done else
                f"found at iteration {done} (train.finite_check=log reads it every log_interval)")
        return FloatingPointError(f"loss is not finite at iteration {first}{which}, {when}; {last_good}")


class StopSignal:
    """SIGTERM (what job schedulers send before killing a job) and SIGINT-free graceful stop: the
    handler only sets a flag; the loop checks it after each step, writes a checkpoint and stops.
    Under DDP the flag is all-reduced so every rank stops after the same step."""

    def __init__(self) -> None:
        self.flag, self._previous = False, None

    def __enter__(self) -> "StopSignal":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.flag = True

    def requested(self, world: int, device: torch.device, done: int = 0, every: int = 1) -> bool:
        """Has any rank received SIGTERM? Without DDP: the flag. Under DDP every ``every`` steps, one
        tiny all-reduce (a host read), so that all ranks stop after the same step."""
        if world == 1:
            return self.flag
        if done % every:
            return False
        t = torch.tensor([float(self.flag)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)


class Preempted(RuntimeError):
    """Training stopped on SIGTERM after writing a checkpoint."""


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def write_skipped(out: Path, datasets: dict[str, Any], mode: str) -> None:
    """With ``on_error=skip``: print how many files each dataset left out and list them in
    ``skipped.json`` (file and reason) in the run folder."""
    skipped = {role: list(getattr(ds, "problems", [])) for role, ds in datasets.items() if ds is not None}
    skipped = {role: probs for role, probs in skipped.items() if probs}
    path = out / "skipped.json"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(skipped, indent=2))
    counts = ", ".join(f"{len(p)} {role}" for role, p in skipped.items())
    print(f"[{out.name}] skipped {counts} file(s) with problems (data.*.on_error=skip): see {path}", flush=True)


def nan_none(xs: list[float]) -> list[float | None]:
    """NaN -> None (JSON has no NaN), rounded to 4 decimals."""
    return [None if math.isnan(x) else round(x, 4) for x in xs]


def progress_mode(progress: str) -> str:
    """``auto`` -> ``bar`` on a terminal, else ``log``."""
    if progress == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return progress
