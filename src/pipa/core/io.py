"""Atomic file writing: a crash mid-write never leaves a half-written file under the final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, fsync it, then rename over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when the message is empty), cut to
    ``limit`` characters: what a one-line error quotes of a library's multi-line one."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
