"""Datasets. Every item is a dict: ``image`` float32 (3, H, W) in [0, 1], ``label`` int64 (H, W)
(255 = ignore) when labelled; video items add ``prev_image``, ``flow`` (2, H, W, backward flow
from this frame to the previous one, pixels) and ``flow_valid`` (H, W) bool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DatasetConfig
from . import synthetic
from .benchmarks import FolderDataset
from .io import DatasetError, default_cache_dir

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


class SyntheticDataset(Dataset):
    """The built-in benchmark, rendered once and kept in memory (cached on disk as .npz).

    ``clip_length`` 1: single images. ``clip_length`` T > 1: T-frame ego-motion clips; item ``i``
    is frame ``t`` (1 <= t < T) of a clip with its previous frame and the exact flow between them."""

    def __init__(self, domain: str = "source", split: str = "train", num_images: int = 2000, height: int = 96,
                 width: int = 192, seed: int = 0, clip_length: int = 1, cache_dir: str | Path | None = None,
                 progress: bool = False, labelled: bool = True, flow: str = "exact") -> None:
        self.scenes = synthetic.SyntheticScenes(domain, split, height, width, seed)
        self.class_names = list(synthetic.CLASS_NAMES)
        self.palette = [list(c) for c in synthetic.PALETTE]
        self.clip_length = clip_length
        self.num_items = num_images
        self.labelled = labelled  # False: items carry no label (unlabelled target data stays unlabelled)
        key = synthetic.config_digest(domain=domain, split=split, n=num_images, h=height, w=width, seed=seed, T=clip_length)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        path = cache / f"synthetic-{domain}-{split}-{key}.npz"
        arrays = _load_npz(path)
        if arrays is None:
            arrays = self._render(progress)
            _save_npz(path, arrays)
        self.images = torch.from_numpy(arrays["images"])  # (N, T, 3, H, W) uint8
        self.labels = torch.from_numpy(arrays["labels"])  # (N, T, H, W) uint8
        self.flow = torch.from_numpy(arrays["flow"]) if clip_length > 1 else None  # (N, T, 2, H, W)
        self.valid = torch.from_numpy(arrays["valid"]) if clip_length > 1 else None
        self.flow_kind = flow
        if clip_length > 1 and flow == "dis":
            self.flow, self.valid = self._estimated_flow(cache / f"synthetic-{domain}-{split}-{key}-dis.npz")

    def _render(self, progress: bool) -> dict[str, np.ndarray]:
        from tqdm import tqdm

        T, s = self.clip_length, self.scenes
        n = self.num_items if T == 1 else -(-self.num_items // (T - 1))
        images = np.zeros((n, T, 3, s.height, s.width), np.uint8)
        labels = np.zeros((n, T, s.height, s.width), np.uint8)
        flow = np.zeros((n, T, 2, s.height, s.width), np.float32) if T > 1 else None
        valid = np.zeros((n, T, s.height, s.width), bool) if T > 1 else None
        desc = f"rendering synthetic {s.domain}/{s.split}"
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
            clip = s.render_clip(i, T)
            images[i] = clip.frames.transpose(0, 3, 1, 2)
            labels[i] = clip.labels
            if T > 1:
                flow[i] = clip.flow.transpose(0, 3, 1, 2)
                valid[i] = clip.valid
        out = {"images": images, "labels": labels}
        if T > 1:
            out.update(flow=flow, valid=valid)
        return out

    def _estimated_flow(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward flow of every frame to its predecessor by OpenCV DIS (``pipa flow``'s default),
        cached next to the renders; every pixel valid (an estimator knows no occlusions)."""
        arrays = _load_npz(path)
        if arrays is None:
            from .flow import estimate_flow

            frames = self.images.permute(0, 1, 3, 4, 2).numpy()  # (N, T, H, W, 3)
            flow = np.zeros(tuple(self.flow.shape), np.float32)  # type: ignore[union-attr]
            for c in range(frames.shape[0]):
                for t in range(1, frames.shape[1]):
                    flow[c, t] = estimate_flow(frames[c, t], frames[c, t - 1], "dis").transpose(2, 0, 1)
            arrays = {"flow": flow}
            _save_npz(path, arrays)
        flow_t = torch.from_numpy(arrays["flow"])
        return flow_t, torch.ones(flow_t[:, :, 0].shape, dtype=torch.bool)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.clip_length == 1:
            item = {"image": self.images[index, 0].float() / 255}
            if self.labelled:
                item["label"] = self.labels[index, 0].long()
            return item
        c, t = divmod(index, self.clip_length - 1)
        t += 1
        item = {"image": self.images[c, t].float() / 255, "prev_image": self.images[c, t - 1].float() / 255}
        if self.flow_kind != "none":
            item.update(flow=self.flow[c, t], flow_valid=self.valid[c, t])
        if self.labelled:
            item["label"] = self.labels[c, t].long()
        return item


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache is re-rendered


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from ..core.io import atomic_write

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    try:
        atomic_write(path, write)
    except OSError:
        pass  # the cache is an optimisation: a read-only home must not stop training


def build_dataset(cfg: DatasetConfig, num_classes: int, cache_dir: str | None = None, labelled: bool = True,
                  progress: bool = False) -> Dataset:
    """Dataset from its config (``synthetic`` or ``folder``)."""
    if cfg.name == "synthetic":
        if num_classes != synthetic.NUM_CLASSES:
            raise DatasetError(f"the synthetic benchmark has {synthetic.NUM_CLASSES} classes, but model.num_classes={num_classes}")
        return SyntheticDataset(cfg.domain, cfg.split, cfg.num_images, cfg.height, cfg.width, cfg.seed,
                                cfg.clip_length, cache_dir, progress, labelled, cfg.synthetic_flow)
    if cfg.name == "folder" and not cfg.mapping and not (cfg.root and (Path(cfg.root) / "mapping.json").is_file()):
        if not cfg.root:
            raise DatasetError("a folder dataset needs data.<which>.root")
        return FolderDataset(cfg.root, cfg.split or None, num_classes, labelled, cfg.on_error,
                             resize=tuple(cfg.resize) if cfg.resize else None, crop=tuple(cfg.crop) if cfg.crop else None,
                             verify_labels=cfg.verify_labels, cat_max_ratio=cfg.cat_max_ratio)
    return build_real_dataset(cfg, num_classes, labelled)


def build_real_dataset(cfg: DatasetConfig, num_classes: int, labelled: bool = True) -> Dataset:
    """A published benchmark in its original layout (``pipa.data.benchmarks``)."""
    from . import benchmarks as B

    if not cfg.root:
        raise DatasetError(f"dataset '{cfg.name}' needs data.<which>.root (its folder in the original layout)")
    common: dict[str, Any] = {"labelled": labelled, "on_error": cfg.on_error, "flow_format": cfg.flow_format,
                              "resize": tuple(cfg.resize) if cfg.resize else None,
                              "crop": tuple(cfg.crop) if cfg.crop else None, "verify_labels": cfg.verify_labels,
                              "cat_max_ratio": cfg.cat_max_ratio,
                              "pseudo_margins": tuple(cfg.pseudo_margins) if cfg.pseudo_margins else None}
    video = {"frame_offset": cfg.frame_offset, "flow_root": cfg.flow_root}
    classes = cfg.classes or B.DEFAULT_CLASSES.get(cfg.name, num_classes)
    if cfg.name == "folder":
        ds: Dataset = B.MappedFolder(cfg.root, cfg.split or None, cfg.mapping, **common)
    elif cfg.name in ("gta5", "synthia"):
        ds = B.BENCHMARKS[cfg.name](cfg.root, classes=classes, **common)
    elif cfg.name == "cityscapes":
        ds = B.Cityscapes(cfg.root, cfg.split, classes=classes, **common)
    elif cfg.name == "cityscapes_seq":
        ds = B.CityscapesSeq(cfg.root, cfg.split, classes=classes, **video, **common)
    elif cfg.name == "viper":
        ds = B.Viper(cfg.root, cfg.split, classes=classes, **video, **common)
    elif cfg.name == "synthia_seq":
        ds = B.SynthiaSeq(cfg.root, classes=classes, **video, **common)
    else:
        raise DatasetError(f"unknown dataset name '{cfg.name}'; choose synthetic, folder, gta5, cityscapes, synthia, "
                           "synthia_seq, viper or cityscapes_seq")
    n = len(getattr(ds, "class_names", []))
    if n and n != num_classes:
        raise DatasetError(f"dataset '{cfg.name}' ({cfg.root}) has {n} classes, but model.num_classes={num_classes}")
    return ds
