"""``pipa data-stats``: class pixel counts and problems of a dataset, as one JSON object.

The same counts feed rare class sampling (``pipa.uda.rcs``), cached next to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io import DatasetError

NAMES = ("gta5", "cityscapes", "synthia", "synthia_seq", "viper", "cityscapes_seq", "folder", "synthetic")


def open_dataset(name: str, root: str | None, split: str | None = None, classes: int | None = None,
                 on_error: str = "skip", labelled: bool = True, **kw: Any) -> Any:
    """A dataset by benchmark name (``NAMES``), indexed with ``on_error`` (``skip`` gathers problems)."""
    from . import benchmarks as B

    if name == "synthetic":
        from ..config import DatasetConfig
        from .datasets import SyntheticDataset

        # split: source (= train) | target | val (target validation)
        domain, sp = {"val": ("target", "val"), "target": ("target", "train")}.get(split or "source", ("source", "train"))
        c = DatasetConfig(domain=domain, split=sp, num_images=300 if sp == "val" else 2000)
        if classes not in (None, 8):
            raise DatasetError(f"dataset 'synthetic' has 8 classes, not {classes}")
        return SyntheticDataset(c.domain, c.split, c.num_images, c.height, c.width, c.seed, labelled=labelled)
    if root is None:
        raise DatasetError(f"dataset '{name}' needs --root")
    if name == "folder":
        if (Path(root) / "mapping.json").is_file():
            return B.MappedFolder(root, split, on_error=on_error, labelled=labelled)
        from .datasets import FolderDataset

        return FolderDataset(root, split, classes, labelled, on_error)
    if name not in B.BENCHMARKS:
        raise DatasetError(f"unknown dataset '{name}'; choose from {', '.join(NAMES)}")
    cls = B.BENCHMARKS[name]
    args: dict[str, Any] = {"on_error": on_error, "labelled": labelled, **kw}
    if classes:
        args["classes"] = classes
    if split and name in ("cityscapes", "cityscapes_seq", "viper"):
        args["split"] = split
    try:
        return cls(root, **args)
    except ValueError as exc:
        if "unknown label mapping" in str(exc):
            raise DatasetError(f"dataset '{name}' has no {classes}-class mapping ({exc})") from None
        raise


def dataset_stats(ds: Any) -> dict[str, Any]:
    """``num_images``, ``class_names``, ``pixel_counts`` (per class at the labels' native
    resolution, after mapping, ignore not counted) and ``problems`` (``{"file", "problem"}``)."""
    names = list(getattr(ds, "class_names", []))
    K = len(names)
    counts = np.zeros(K, np.int64)
    problems = list(getattr(ds, "problems", []))
    n = len(ds)
    for i in range(n):
        try:
            lab = _native_label(ds, i)
        except DatasetError as exc:
            file, _, why = str(exc).partition(": ")
            problems.append({"file": file, "problem": why or str(exc)})
            continue
        lab = lab[lab != 255]
        if lab.size == 0:  # trains nothing: every pixel is ignore (reported; training gives it zero loss)
            entries = getattr(ds, "entries", None)
            file = str(entries[i].label) if entries is not None else f"item {i}"
            problems.append({"file": file, "problem": "label has no valid pixel (every value is 255)"})
        counts += np.bincount(lab.astype(np.int64).reshape(-1), minlength=K)[:K]
    return {"num_images": n, "class_names": names, "pixel_counts": {c: int(v) for c, v in zip(names, counts)},
            "problems": problems}


def _native_label(ds: Any, i: int) -> np.ndarray:
    if hasattr(ds, "label") and callable(ds.label):
        return np.asarray(ds.label(i))
    item = ds[i]
    if "label" not in item:
        raise DatasetError(f"item {i}: the dataset has no labels")
    return item["label"].numpy()
