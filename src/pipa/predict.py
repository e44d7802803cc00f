"""``pipa predict``: image files, folders of images or frames, and video files through a
:class:`~pipa.api.Segmenter` (the weights' evaluation protocol: input size, whole or sliding window;
batched; on the GPU when there is one). Per image or frame: ``<stem>_labels.png`` (train ids, or the
dataset's original ids with ``label_ids``), ``<stem>_color.png``, ``<stem>_overlay.png``; with
``video``, ``<name>_color.mp4`` per video or frame folder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .api import Segmenter
from .data.flow import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .data.io import DatasetError


def train_to_label_ids(mapping_name: str, num_classes: int) -> np.ndarray:
    """A lookup table train id -> the dataset's original id (255 -> 0, Cityscapes' 'unlabeled'),
    inverting a shipped mapping (raw id -> train id); every train id must come from one raw id."""
    from .data.mappings import load_mapping

    m = load_mapping(mapping_name)
    if m.num_classes != num_classes:
        raise ValueError(f"mapping '{mapping_name}' has {m.num_classes} classes, the model {num_classes}")
    lut = np.zeros(256, np.uint8)
    for train in range(num_classes):
        raws = sorted(r for r, t in m.table.items() if t == train)
        if len(raws) != 1:
            raise ValueError(f"mapping '{mapping_name}': train id {train} comes from raw ids {raws}, not exactly one")
        lut[train] = raws[0]
    return lut


def _frames(source: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(stem, (H, W, 3) uint8 RGB) of an image file, each image of a folder (sorted), or each frame of a video."""
    from PIL import Image, UnidentifiedImageError

    def read(p: Path) -> np.ndarray:
        try:
            return np.asarray(Image.open(p).convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{p}: unreadable image ({type(exc).__name__})") from None

    if source.is_dir():
        files = sorted(q for q in source.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        for f in files:
            yield f.stem, read(f)
    elif source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS:
        from .data.flow import _video_frames

        n = 0
        for i, frame in enumerate(_video_frames(source)):
            n += 1
            yield f"{source.stem}_{i:06d}", frame
        if n == 0:
            raise DatasetError(f"{source}: no frames could be read from this video")
    elif source.is_file():
        yield source.stem, read(source)
    else:
        raise FileNotFoundError(f"input not found: {source}")


def predict_sources(seg: Segmenter, sources: list[Path], out: Path, label_ids: str | None = None, color: bool = True,
                    overlay: bool = True, video: bool = False) -> int:
    """Segment every source into ``out``; returns the number of images/frames written."""
    from PIL import Image

    from .viz import colorize, default_palette
    from .viz import overlay as blend

    out.mkdir(parents=True, exist_ok=True)
    palette = default_palette(len(seg.class_names))
    lut = None
    if label_ids is not None:
        name = f"cityscapes_{len(seg.class_names)}" if label_ids == "auto" else label_ids
        lut = train_to_label_ids(name, len(seg.class_names))
    count = 0
    for source in sources:
        writer = None
        batch: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            nonlocal writer, count
            if not batch:
                return
            preds = seg.predict([torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255 for _, f in batch])
            for (stem, frame), pred in zip(batch, preds):
                lab = pred.cpu().numpy().astype(np.uint8)
                Image.fromarray(lab if lut is None else lut[lab]).save(out / f"{stem}_labels.png")
                col = colorize(lab, palette)
                if color:
                    Image.fromarray(col).save(out / f"{stem}_color.png")
                if overlay:
                    Image.fromarray(blend(frame, lab, palette)).save(out / f"{stem}_overlay.png")
                if video and (source.is_dir() or source.suffix.lower() in VIDEO_EXTENSIONS):
                    writer = writer or _video_writer(out / f"{source.stem}_color.mp4", col.shape)
                    writer.write(col[..., ::-1].copy())
                count += 1
            batch.clear()

        for stem, frame in _frames(source):
            batch.append((stem, frame))
            if len(batch) == seg.batch_size:
                flush()
        flush()
        if writer is not None:
            writer.release()
    return count


def _video_writer(path: Path, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 17.0, (shape[1], shape[0]))
    if not w.isOpened():
        raise OSError(f"{path}: cannot write a video here (OpenCV's mp4v writer)")
    return w
