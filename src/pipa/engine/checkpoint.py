"""Training-state checkpoints: plain containers, atomic writes, ``weights_only`` loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
# 2: the method state is recipe (student, teacher) + terms (heads, frozen encoder) + shared memory
FORMAT_VERSION = 2


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.checkpoint.pt.tmp-PID`` files left by a process killed mid-write (PID not alive)."""
    removed = []
    for tmp in folder.glob(f".{CHECKPOINT_NAME}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain containers and tensors) atomically to ``path``."""
    atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; one-line errors for missing, corrupt
    or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise RuntimeError(f"cannot read checkpoint {path}: the file is empty (0 bytes); delete it to start again")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise RuntimeError(f"{path} is not a pipa training checkpoint of format {FORMAT_VERSION} (found {found!r})")
    return state


def segmentor_from_checkpoint(path: str | Path, which: str = "student"):  # -> tuple[Segmentor, int]
    """The student's or the EMA teacher's segmentor from a training checkpoint (a run folder or its
    ``checkpoint.pt``), with the run's class names: (segmentor, iteration)."""
    import dataclasses
    import json

    from ..config import from_dict
    from ..models import build_segmentor

    path = Path(path)
    ckpt = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    cfg = from_dict(ckpt["config"])
    prefix = {"student": "model.", "teacher": "recipe.teacher.ema."}[which]
    state = {k[len(prefix):]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"the checkpoint has no {which} weights (method '{cfg.method.name}' has no teacher)")
    folder = path if path.is_dir() else path.parent
    names = json.loads((folder / "config.json").read_text()).get("class_names") if (folder / "config.json").is_file() else None
    model = build_segmentor(dataclasses.replace(cfg.model, pretrained=None), names)
    model.load_state_dict(state)
    return model, int(ckpt["iteration"])
