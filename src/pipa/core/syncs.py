"""Counting the calls that make a GPU wait: a :class:`~torch.overrides.TorchFunctionMode` that sees
every tensor method and torch function the Python code calls, on any device (so a CPU test can
bound the host synchronisations a CUDA step would make).

    with SyncCounter() as syncs:
        loss, logs = method.step(batch, it)
    syncs.total, syncs.calls   # e.g. 2, Counter({'nonzero': 1, 'unique': 1})

Counted: reading a value on the host (``item``, ``tolist``, ``__bool__``/``__float__``/``__int__``/
``__index__``, ``cpu``/``numpy``), data-dependent shapes (``nonzero``, ``argwhere``, ``unique``,
``masked_select``, one-argument ``where``, boolean-mask indexing, ``repeat_interleave`` with a tensor
of repeats) and ``bincount`` (its CUDA kernel reads the maximum on the host). Operations that
synchronise inside C++ without passing through Python are not seen; ``torch.cuda.set_sync_debug_mode``
(used by ``scripts/bench_gpu.py`` on a GPU) sees those.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

ALWAYS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero",
          "argwhere", "unique", "unique_consecutive", "masked_select", "bincount", "nonzero_static"}


def on_host(t: torch.Tensor) -> torch.Tensor:
    """Mark a tensor that lives on the CPU by design whatever the training device (a draw from the
    step's CPU generator, say): reading it costs no GPU synchronisation, so :class:`SyncCounter`
    does not count it. Returns ``t``."""
    t._pipa_host = True  # type: ignore[attr-defined]
    return t


def _host(args: tuple) -> bool:
    return bool(args) and torch.is_tensor(args[0]) and getattr(args[0], "_pipa_host", False)


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def _is_mask(x: Any) -> bool:
    if torch.is_tensor(x):
        return x.dtype == torch.bool
    if isinstance(x, (tuple, list)):
        return any(_is_mask(v) for v in x)
    return False


def _blocking_copy(name: str, args: tuple, kwargs: dict) -> bool:
    """``t.to(device)`` / ``t.cuda()`` without ``non_blocking=True``: a host<->device copy that waits
    for the GPU (here every tensor is on the CPU, so any device argument counts)."""
    if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True and not torch.is_tensor(args[1])):
        return False
    dev = [a for a in [*args[1:], kwargs.get("device")] if isinstance(a, (str, torch.device))]
    return bool(dev) or name == "cuda"


class SyncCounter(TorchFunctionMode):
    """Counts host-synchronising calls by name while active (``calls``: a Counter; ``total``)."""

    def __init__(self, trace: bool = False) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.trace = trace
        self.where: Counter[str] = Counter()  # with ``trace``: "call at file:line" of pipa's code

    def _count(self, what: str) -> None:
        self.calls[what] += 1
        if self.trace:
            import traceback

            frames = [f for f in traceback.extract_stack()[:-2] if "/pipa/" in f.filename and "syncs.py" not in f.filename]
            at = f"{frames[-1].filename.split('/pipa/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.where[f"{what} at {at}"] += 1

    @property
    def total(self) -> int:
        """All counted calls."""
        return sum(self.calls.values())

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        if name in ("to", "cuda") and _blocking_copy(name, args, kwargs):
            self._count("to(device) blocking")
        elif name == "nonzero_static" or _host(args):
            pass  # a fixed output size: no synchronisation
        elif name in ALWAYS:
            self._count(name)
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_mask(args[1]):
            self._count(f"{name}[mask]")
        elif name == "where" and len(args) + len(kwargs) == 1:
            self._count("where(cond)")
        elif name == "repeat_interleave" and len(args) > 1 and torch.is_tensor(args[1]) and args[1].numel() > 1:
            self._count("repeat_interleave")
        return func(*args, **kwargs)
