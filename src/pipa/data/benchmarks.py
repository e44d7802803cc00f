"""Loaders for the published benchmarks in their original on-disk layouts (reference:
``datasets.md`` §1), with label mappings as data (``pipa.data.mappings``).

=================  ====================================================================  =========
name               layout under ``root``                                                  labels
=================  ====================================================================  =========
``gta5``           ``images/NNNNN.png``, ``labels/NNNNN.png``                             palette PNG, Cityscapes ids -> 19
``cityscapes``     ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``,                      ``labelIds`` -> 19 / 16 / 13 / 12 / 15
                   ``gtFine/{split}/{city}/*_gtFine_labelIds.png``
``synthia``        ``RGB/*.png``, ``GT/LABELS/*.png``                                     16-bit, class id in R -> 19 / 16 / 13
``synthia_seq``    ``rgb/NNNNNN.png`` + ``label/NNNNNN.png`` (DA-VSN), or                 16-bit, R -> 12 (evaluated on 11)
                   ``RGB/Stereo_Left/Omni_F`` + ``GT/LABELS/Stereo_Left/Omni_F``
``viper``          ``{split}/img/SSS/SSS_FFFFF.{jpg,png}``, ``{split}/cls/SSS/SSS_FFFFF.png``  indexed PNG -> 15, ego car ignored
``cityscapes_seq`` ``leftImg8bit_sequence/{split}/{city}/*``, labels from ``gtFine``           as ``cityscapes``
=================  ====================================================================  =========

Every dataset is indexed up front: missing or unreadable files, image/label size mismatches and
missing neighbour frames are found then, reported with the file name, and either stop the run
(``on_error='raise'``) or leave the file out (``'skip'``, listed in ``problems``). Label values
that are not ids of the dataset are found when a label is read (``pipa data-stats`` reads them
all). Video datasets return the labelled frame t with frame t-k (``frame_offset``) and, when a
flow folder is given, the backward flow t -> t-k (DA-VSN ``int16 ×10`` ``.npy`` or KITTI PNG).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .io import (DatasetError, image_size, read_flow_kitti, read_flow_npy, read_index_png, read_png16, read_rgb,
                 resize_flow, resize_rgb)
from .mappings import LabelMapping, load_mapping

from ..core.constants import IGNORE_INDEX


@dataclass
class Entry:
    image: Path
    label: Path | None = None
    prev: Path | None = None  # frame t-k (video)
    flow: Path | None = None  # backward flow t -> t-k
    extra: dict[str, Any] = field(default_factory=dict)


# -- label readers ------------------------------------------------------------------------------
def _components_at(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """The 8-connected component of ``mask`` containing (y, x), by row runs + union-find
    (the role of ``cv2.connectedComponentsWithStats`` in DA-VSN's VIPER loader)."""
    out = np.zeros_like(mask, dtype=bool)
    if not mask[y, x]:
        return out
    runs: list[tuple[int, int, int]] = []  # (row, start, end)
    row_runs: list[list[int]] = []
    for r in range(mask.shape[0]):
        m = np.concatenate([[False], mask[r], [False]]).astype(np.int8)
        d = np.diff(m)
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        row_runs.append(list(range(len(runs), len(runs) + len(starts))))
        runs += [(r, int(s), int(e)) for s, e in zip(starts, ends)]
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(1, mask.shape[0]):
        above = row_runs[r - 1]
        for i in row_runs[r]:
            _, s, e = runs[i]
            for j in above:
                _, s2, e2 = runs[j]
                if s2 <= e and s <= e2:  # overlap including diagonal neighbours (8-connectivity)
                    parent[find(i)] = find(j)
    target = next(i for i in row_runs[y] if runs[i][1] <= x < runs[i][2])
    root = find(target)
    for i, (r, s, e) in enumerate(runs):
        if find(i) == root:
            out[r, s:e] = True
    return out


def remove_ego_vehicle(ids: np.ndarray, car_id: int = 24) -> np.ndarray:
    """VIPER: the car component touching the bottom-centre pixel is the ego vehicle -> id 0."""
    h, w = ids.shape
    if ids[h - 1, w // 2] != car_id:
        return ids
    ids = ids.copy()
    ids[_components_at(ids == car_id, h - 1, w // 2)] = 0
    return ids


def _read_png_index(path: Path) -> np.ndarray:
    return read_index_png(path)


def _read_synthia(path: Path) -> np.ndarray:
    arr = read_png16(path)
    return arr[..., 0]  # the class id is in the first (red) channel; the second is the instance id


# -- the generic indexed dataset ------------------------------------------------------------------
class IndexedDataset(Dataset):
    """Entries found by a subclass's ``index``; labels through ``read_label`` and a mapping."""

    name = "indexed"
    label_reader: Callable[[Path], np.ndarray] = staticmethod(_read_png_index)

    def __init__(self, entries: list[Entry], mapping: LabelMapping | None, labelled: bool = True,
                 on_error: str = "raise", resize: tuple[int, int] | None = None, crop: tuple[int, int] | None = None,
                 crop_bottom: int = 0, flow_format: str = "npy", check: bool = True, verify_labels: bool = False,
                 cat_max_ratio: float = 1.0, pseudo_margins: tuple[int, int, int, int] | None = None) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be raise or skip, got {on_error!r}")
        self.mapping = mapping
        self.class_names = mapping.class_names if mapping else []
        self.labelled = labelled
        self.resize, self.crop, self.crop_bottom, self.flow_format = resize, crop, crop_bottom, flow_format
        self.cat_max_ratio, self.pseudo_margins = cat_max_ratio, pseudo_margins
        self.problems: list[dict[str, str]] = []
        self.entries: list[Entry] = []
        self._sizes: dict[Path, tuple[int, int]] = {}  # (H, W) of each image, read by check_entry
        for e in entries:
            problem = self.check_entry(e) if check else None
            if problem:
                if on_error == "raise":
                    raise DatasetError(f"{problem[0]}: {problem[1]}")
                self.problems.append({"file": str(problem[0]), "problem": problem[1]})
                continue
            self.entries.append(e)
        self._check_sizes(on_error)
        if verify_labels and labelled:  # decode every label now: bad values stop or skip before training
            self._verify_labels(on_error)
        if not self.entries:
            raise DatasetError(f"{type(self).__name__}: no usable files found"
                               + (f" ({len(self.problems)} problems, first: {self.problems[0]})" if self.problems else ""))

    def _verify_labels(self, on_error: str) -> None:
        """Decode and map every label (one full read of the labels: ~20 ms per 1914x1052 GTA5 label
        here); files that passed before (same path, size and mtime) are remembered in the cache
        folder and not decoded again."""
        cache = self._verified_cache()
        seen = _read_json_list(cache) if cache is not None else set()
        kept, passed = [], set()
        for i, e in enumerate(self.entries):
            key = _file_key(e.label)
            try:
                if key not in seen:
                    self.label(i)
                kept.append(e)
                passed.add(key)
            except DatasetError as exc:
                if on_error == "raise":
                    raise
                file, _, why = str(exc).partition(": ")
                self.problems.append({"file": file, "problem": why})
        self.entries = kept
        if cache is not None and passed - seen:
            _write_json_list(cache, seen | passed)

    def _verified_cache(self) -> Path | None:
        if self.mapping is None:
            return None
        import hashlib

        from .io import default_cache_dir

        rule = f"{type(self).__name__}|{self.mapping.name}|{sorted(self.mapping.table.items())}|{self.crop_bottom}"
        return default_cache_dir() / "label-checks" / f"{hashlib.sha1(rule.encode()).hexdigest()[:16]}.json"

    def _check_sizes(self, on_error: str) -> None:
        """Items of different sizes cannot be batched: without ``resize`` (or a ``crop`` that fits
        every image), images whose size differs from the most common one are reported by file."""
        sizes = self._sizes
        if self.resize is not None or len(set(sizes.values())) <= 1:
            return
        if self.crop is not None and all(h >= self.crop[0] and w >= self.crop[1] for h, w in sizes.values()):
            return
        common = Counter(sizes.values()).most_common(1)[0][0]
        kept = []
        for e in self.entries:
            size = sizes.get(e.image, common)
            if size == common:
                kept.append(e)
                continue
            why = (f"image size {size[1]}x{size[0]} differs from the dataset's {common[1]}x{common[0]} (W x H): "
                   "set data.<which>.resize (or a crop that fits every image)")
            if on_error == "raise":
                raise DatasetError(f"{e.image}: {why}")
            self.problems.append({"file": str(e.image), "problem": why})
        self.entries = kept

    def check_entry(self, e: Entry) -> tuple[Path, str] | None:
        try:
            size = image_size(e.image)
        except DatasetError as exc:
            return e.image, str(exc).split(": ", 1)[-1]
        self._sizes[e.image] = size
        if e.prev is not None:
            if not e.prev.is_file():
                return e.prev, "missing neighbour frame"
            try:
                if image_size(e.prev) != size:
                    return e.prev, "neighbour frame size differs from the frame"
            except DatasetError as exc:
                return e.prev, str(exc).split(": ", 1)[-1]
        if e.flow is not None and not e.flow.is_file():
            return e.flow, "missing optical flow file"
        if self.labelled:
            if e.label is None or not e.label.is_file():
                return (e.label or e.image), "missing label file"
            try:
                lsize = image_size(e.label)
            except DatasetError as exc:
                return e.label, str(exc).split(": ", 1)[-1]
            if lsize != size:
                return e.label, f"label size {lsize[1]}x{lsize[0]} != image size {size[1]}x{size[0]} (W x H)"
        return None

    def __len__(self) -> int:
        return len(self.entries)

    # raw ids -> train ids, with the dataset's own rules
    def raw_label(self, e: Entry) -> np.ndarray:
        assert e.label is not None
        return type(self).label_reader(e.label)

    def map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        assert self.mapping is not None
        unknown = self.mapping.unknown_values(raw)
        if unknown:
            raise DatasetError(f"{path}: label values {unknown[:5]} are not {self.name} ids (0..{self.mapping.max_raw_id})")
        return self.mapping.apply(raw)

    def label(self, index: int) -> np.ndarray:
        """Mapped train ids (H, W) uint8 at the label's native resolution (no resize/crop)."""
        e = self.entries[index]
        lab = self.map_label(self.raw_label(e), e.label)  # type: ignore[arg-type]
        return lab[: lab.shape[0] - self.crop_bottom] if self.crop_bottom else lab

    def _image(self, path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(3, H, W) float in [0, 1]; with ``size`` resized as uint8 (bilinear, as mmcv.imresize)."""
        img = read_rgb(path)
        if self.crop_bottom:
            img = img[: img.shape[0] - self.crop_bottom]
        if size is not None:
            img = resize_rgb(img, size)
        if not (img.flags.writeable and img.flags.c_contiguous):  # a read-only decoder buffer: copy once
            img = np.array(img)
        return torch.from_numpy(img).permute(2, 0, 1).float() / 255

    def _flow(self, e: Entry, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        assert e.flow is not None
        if self.flow_format == "kitti":
            f, valid = read_flow_kitti(e.flow)
            flow, v = torch.from_numpy(f), torch.from_numpy(valid)
        else:
            flow = torch.from_numpy(read_flow_npy(e.flow))
            v = torch.ones(flow.shape[1:], dtype=torch.bool)
        flow = resize_flow(flow, size)
        v = F.interpolate(v[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
        return flow, v

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    def sample(self, index: int, cls: int = -1, min_pixels: float = 0.0,
               generator: torch.Generator | None = None) -> dict[str, Any]:
        """Item ``index``, its random crop drawn from ``generator`` (None: the global RNG). With a
        class ``cls`` >= 0 (rare class sampling) and a crop, the crop is re-drawn up to 10 times until
        it holds more than ``min_pixels`` pixels of ``cls`` (DAFormer's ``min_crop_ratio`` rule; the
        file is decoded and resized once)."""
        full = self._full_item(index)
        if self.crop is None:
            return full
        item = _random_crop(full, self.crop, self.cat_max_ratio, generator)
        for _ in range(9 if cls >= 0 and min_pixels > 0 else 0):
            if int((item["label"] == cls).sum()) > min_pixels:
                break
            item = _random_crop(full, self.crop, self.cat_max_ratio, generator)
        return item

    def _full_item(self, index: int) -> dict[str, Any]:
        """Item ``index`` decoded, mapped and resized, not cropped."""
        e = self.entries[index]
        size = tuple(self.resize) if self.resize is not None else None
        out: dict[str, Any] = {"image": self._image(e.image, size)}
        H, W = out["image"].shape[-2:]
        if self.labelled:
            out["label"] = torch.from_numpy(self.label(index).astype(np.int64))
        if e.prev is not None:
            out["prev_image"] = self._image(e.prev, size)
            if e.flow is not None:
                out["flow"], out["flow_valid"] = self._flow(e, (H, W))
        if self.resize is not None:
            out = _resize_item(out, self.resize)
        if self.pseudo_margins is not None:
            out["valid_pseudo"] = margin_mask(tuple(out["image"].shape[-2:]), self.pseudo_margins)
        return out


def margin_mask(size: tuple[int, int], margins: tuple[int, int, int, int]) -> torch.Tensor:
    """(H, W) bool, False within ``margins`` (top, bottom, left, right) pixels of the frame's border:
    pseudo-labels there get weight 0 (HRDA's crop_pseudo_margins; cropped along with the image, so
    only crops at the frame's border lose them)."""
    top, bottom, left, right = margins
    mask = torch.ones(size, dtype=torch.bool)
    mask[:top] = False
    mask[size[0] - bottom:] = False
    mask[:, :left] = False
    mask[:, size[1] - right:] = False
    return mask


def _resize_item(item: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Images bilinear, labels and validity nearest, flow bilinear with per-axis scaling."""
    out = dict(item)
    for k in ("image", "prev_image"):
        if k in item and tuple(item[k].shape[-2:]) != tuple(size):
            out[k] = F.interpolate(item[k][None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    if "label" in item:
        out["label"] = F.interpolate(item["label"][None, None].float(), size=size, mode="nearest")[0, 0].long()
    if "flow" in item:
        out["flow"] = resize_flow(item["flow"], size)
        out["flow_valid"] = F.interpolate(item["flow_valid"][None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
    return out


def _random_crop(item: dict[str, Any], crop: tuple[int, int], cat_max_ratio: float = 1.0,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """A random (H, W) crop of every tensor of the item (from ``generator``, else the global RNG). With
    ``cat_max_ratio`` < 1 the crop is re-drawn up to 10 times while one class covers that share or
    more of its labelled pixels, or it holds a single class (mmseg ``RandomCrop``)."""
    H, W = item["image"].shape[-2:]
    ch, cw = min(crop[0], H), min(crop[1], W)
    lab = item.get("label")
    for _ in range(10 if cat_max_ratio < 1.0 and lab is not None else 1):
        y = int(torch.randint(0, H - ch + 1, (1,), generator=generator))
        x = int(torch.randint(0, W - cw + 1, (1,), generator=generator))
        if lab is None or cat_max_ratio >= 1.0:
            break
        window = lab[y:y + ch, x:x + cw]
        counts = torch.bincount(window[window != IGNORE_INDEX].reshape(-1))
        counts = counts[counts > 0]
        if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio:
            break
    return {k: v[..., y:y + ch, x:x + cw] if torch.is_tensor(v) else v for k, v in item.items()}


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


# -- the benchmarks --------------------------------------------------------------------------------
class GTA5(IndexedDataset):
    """GTA5 (Playing for Data): all 24,966 frames are source data; labels are Cityscapes ids."""

    name = "gta5"

    def __init__(self, root: str | Path, classes: int = 19, **kw: Any) -> None:
        root = Path(root)
        imgs = _need_dir(root / "images", "GTA5 images")
        labs = root / "labels"
        entries = [Entry(p, labs / p.name) for p in sorted(imgs.glob("*.png"))]
        super().__init__(entries, load_mapping(f"gta5_{classes}"), **kw)


class Cityscapes(IndexedDataset):
    """Cityscapes ``leftImg8bit`` + ``gtFine_labelIds`` (mapped with a table: ``labelTrainIds`` are
    not needed). ``classes``: 19, 16 or 13 (SYNTHIA heads), 12 (SYNTHIA-Seq), 15 (VIPER)."""

    name = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", classes: int = 19, **kw: Any) -> None:
        root = Path(root)
        imgs = _need_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit")
        entries = []
        for p in sorted(imgs.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            entries.append(Entry(p, root / "gtFine" / split / p.parent.name / f"{stem}_gtFine_labelIds.png"))
        super().__init__(entries, load_mapping(f"cityscapes_{classes}"), **kw)


class Synthia(IndexedDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/*.png``, 16-bit ``GT/LABELS/*.png`` (class id in R)."""

    name = "synthia"
    label_reader = staticmethod(_read_synthia)

    def __init__(self, root: str | Path, classes: int = 19, **kw: Any) -> None:
        root = Path(root)
        imgs = _need_dir(root / "RGB", "SYNTHIA RGB")
        entries = [Entry(p, root / "GT" / "LABELS" / p.name) for p in sorted(imgs.glob("*.png"))]
        super().__init__(entries, load_mapping(f"synthia_{classes}"), **kw)


_CS_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


class CityscapesSeq(IndexedDataset):
    """Cityscapes-Seq: each annotated frame t (frame index parsed from its name; the long-sequence
    cities do not use ``_000019_``) with frame t-k from ``leftImg8bit_sequence`` and, with
    ``flow_root``, the flow ``{city}_{seq}_{t}_{t-k}_int16_x10.npy``."""

    name = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", classes: int = 19, frame_offset: int = 1,
                 flow_root: str | Path | None = None, **kw: Any) -> None:
        root = Path(root)
        seq_dir = _need_dir(root / "leftImg8bit_sequence" / split, "Cityscapes leftImg8bit_sequence")
        gt = root / "gtFine" / split
        anchors = sorted(gt.glob("*/*_gtFine_labelIds.png")) if gt.is_dir() else []
        entries = []
        for lab in anchors:
            stem = lab.name[: -len("_gtFine_labelIds.png")]
            m = _CS_NAME.match(stem + "_leftImg8bit.png")
            if m is None:
                continue
            city, seq, t = m["city"], m["seq"], int(m["frame"])
            frame = seq_dir / city / f"{stem}_leftImg8bit.png"
            prev = seq_dir / city / f"{city}_{seq}_{t - frame_offset:06d}_leftImg8bit.png"
            flow = (Path(flow_root) / f"{city}_{seq}_{t:06d}_{t - frame_offset:06d}_int16_x10.npy") if flow_root else None
            entries.append(Entry(frame, lab, prev, flow, {"frame": t}))
        if not anchors:
            raise DatasetError(f"no annotated frames (gtFine/{split}/*/*_gtFine_labelIds.png) under {root}")
        super().__init__(entries, load_mapping(f"cityscapes_{classes}"), **kw)


class SynthiaSeq(IndexedDataset):
    """SYNTHIA-Seq (SEQS-04-DAWN), DA-VSN layout ``rgb/`` + ``label/`` or the original
    ``RGB/Stereo_Left/Omni_F`` + ``GT/LABELS/Stereo_Left/Omni_F``; frame 0 has no predecessor.
    The bottom 120 rows are cropped, as DA-VSN/TPS/CMOM do (``crop_bottom``)."""

    name = "synthia_seq"
    label_reader = staticmethod(_read_synthia)

    def __init__(self, root: str | Path, classes: int = 12, frame_offset: int = 1, flow_root: str | Path | None = None,
                 crop_bottom: int = 120, **kw: Any) -> None:
        root = Path(root)
        if (root / "rgb").is_dir():
            imgs, labs = root / "rgb", root / "label"
        else:
            imgs = _need_dir(root / "RGB" / "Stereo_Left" / "Omni_F", "SYNTHIA-Seq rgb (or RGB/Stereo_Left/Omni_F)")
            labs = root / "GT" / "LABELS" / "Stereo_Left" / "Omni_F"
        entries = []
        for p in sorted(imgs.glob("*.png")):
            if not p.stem.isdigit() or int(p.stem) < frame_offset:
                continue
            t = int(p.stem)
            prev = imgs / f"{t - frame_offset:0{len(p.stem)}d}.png"
            flow = Path(flow_root) / f"{p.stem}_int16_x10.npy" if flow_root else None
            entries.append(Entry(p, labs / p.name, prev, flow, {"frame": t}))
        super().__init__(entries, load_mapping(f"synthia_seq_{classes}"), crop_bottom=crop_bottom, **kw)


class Viper(IndexedDataset):
    """VIPER: frames with a ``cls`` label (the benchmarks use every 10th), the ego vehicle (car
    component touching the bottom-centre pixel) set to ignore before mapping, frame t-k from
    ``img``, flow ``{seq}_{t:05d}{t-k:05d}_int16_x10.npy``."""

    name = "viper"

    def __init__(self, root: str | Path, split: str = "train", classes: int = 15, frame_offset: int = 1,
                 flow_root: str | Path | None = None, **kw: Any) -> None:
        root = Path(root) / split
        imgs, cls = _need_dir(root / "img", "VIPER img"), _need_dir(root / "cls", "VIPER cls")
        entries = []
        for lab in sorted(cls.glob("*/*.png")):
            seq, _, frame = lab.stem.partition("_")
            if not frame.isdigit():
                continue
            t = int(frame)
            found = [imgs / seq / f"{lab.stem}{ext}" for ext in (".jpg", ".png")]
            img = next((f for f in found if f.is_file()), found[0])
            prev_stem = f"{seq}_{t - frame_offset:05d}"
            prev = next((f for f in (imgs / seq / f"{prev_stem}.jpg", imgs / seq / f"{prev_stem}.png") if f.is_file()),
                        imgs / seq / f"{prev_stem}{img.suffix}")
            flow = Path(flow_root) / f"{seq}_{t:05d}{t - frame_offset:05d}_int16_x10.npy" if flow_root else None
            entries.append(Entry(img, lab, prev, flow, {"frame": t}))
        mapping = load_mapping(f"viper_{classes}")
        super().__init__(entries, mapping, **kw)

    def raw_label(self, e: Entry) -> np.ndarray:
        return remove_ego_vehicle(read_index_png(e.label), car_id=24)  # type: ignore[arg-type]


class MappedFolder(IndexedDataset):
    """A user's own data: ``images[/split]/NAME.ext`` with ``labels[/split]/NAME.png`` and a
    ``mapping.json`` (``class_names`` + ``map`` raw value -> train id) in ``root``."""

    name = "folder"

    def __init__(self, root: str | Path, split: str | None = None, mapping: str | Path | None = None, **kw: Any) -> None:
        root = Path(root)
        img_dir = _need_dir(root / "images" / split if split else root / "images", "images")
        lab_dir = root / "labels" / split if split else root / "labels"
        entries = [Entry(p, lab_dir / f"{p.stem}.png") for p in sorted(img_dir.iterdir())
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
        super().__init__(entries, load_mapping(mapping or root / "mapping.json"), **kw)


def _file_key(path: Path | None) -> str:
    if path is None:
        return ""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_json_list(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return set()  # no cache, or a damaged one: everything is checked again


def _write_json_list(path: Path, items: set[str]) -> None:
    from ..core.io import atomic_write

    try:
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(sorted(items))))
    except OSError:
        pass  # the cache is an optimisation: a read-only home must not stop training


class FolderDataset(IndexedDataset):
    """A user's own data with class-id labels: ``root/images[/split]/NAME.ext`` with
    ``root/labels[/split]/NAME.png`` holding train ids 0..K-1 (255 = ignore); ``root/meta.json``
    may give ``class_names`` (and ``palette``). What ``pipa make-synthetic`` writes.

    The same rules as every real dataset: files checked at indexing (``on_error``), label values
    verified at indexing (``verify_labels``), ``resize`` and ``crop`` applied per item."""

    name = "folder"

    def __init__(self, root: str | Path, split: str | None = None, num_classes: int | None = None,
                 labelled: bool = True, on_error: str = "raise", **kw: Any) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        meta_path = root / "meta.json"
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        names = list(meta.get("class_names") or [str(i) for i in range(num_classes or 0)])
        if not names:
            raise DatasetError(f"{root}: give num_classes or a meta.json with class_names")
        self.palette = meta.get("palette")
        self.num_classes = len(names)
        mapping = LabelMapping("class_ids", names, {i: i for i in range(len(names))}, max_raw_id=255)
        img_dir = _need_dir(root / "images" / split if split else root / "images", "image")
        lab_dir = root / "labels" / split if split else root / "labels"
        entries = [Entry(p, lab_dir / f"{p.stem}.png" if labelled else None) for p in sorted(img_dir.iterdir())
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
        if not entries:
            raise DatasetError(f"no images in {img_dir}")
        super().__init__(entries, mapping, labelled=labelled, on_error=on_error, **kw)

    def map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        bad = (raw != IGNORE_INDEX) & ((raw < 0) | (raw >= self.num_classes))
        if bad.any():
            raise DatasetError(f"{path}: label value {int(raw[bad].flat[0])} outside 0..{self.num_classes - 1} "
                               "and not 255")
        return raw.astype(np.uint8)


BENCHMARKS: dict[str, type[IndexedDataset]] = {
    "gta5": GTA5, "cityscapes": Cityscapes, "synthia": Synthia, "synthia_seq": SynthiaSeq, "viper": Viper,
    "cityscapes_seq": CityscapesSeq, "mapped_folder": MappedFolder,
}
DEFAULT_CLASSES = {"gta5": 19, "cityscapes": 19, "synthia": 19, "synthia_seq": 12, "viper": 15, "cityscapes_seq": 19}
