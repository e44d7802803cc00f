"""Training-state checkpoints: plain containers, atomic writes, ``weights_only`` loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
# 2: the method state is recipe (student, teacher) + terms (heads, frozen encoder) + shared memory
FORMAT_VERSION = 2


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain containers and tensors) atomically to ``path``."""
    atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; one-line errors for missing, corrupt
    or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise RuntimeError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise RuntimeError(f"{path} is not a pipa training checkpoint of format {FORMAT_VERSION} (found {found!r})")
    return state
