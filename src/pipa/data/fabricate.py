"""Fabricated dataset trees in the published layouts, file formats and frame sizes (GTA5, SYNTHIA,
Cityscapes), filled with smooth random pictures and blocky random labels of valid raw ids. For dry
runs and throughput measurements where the real datasets are absent (no downloads here): the
loaders, rare class sampling, crops and evaluation run exactly as on the real files.

    python scripts/fabricate_datasets.py --out /tmp/fake --gta5 8 --cityscapes 4 --synthia 4

Sizes: GTA5 1914x1052 (the common frame size), Cityscapes 2048x1024, SYNTHIA-RAND-CITYSCAPES 1280x760.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"gta5": (1052, 1914), "cityscapes": (1024, 2048), "synthia": (760, 1280), "viper": (1080, 1920)}  # (H, W)


def _ids(mapping: str) -> list[int]:
    """The raw ids that the loader's label mapping turns into classes."""
    from .mappings import load_mapping

    return sorted(load_mapping(mapping).table)


def _picture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8: smooth colour fields plus mild noise (compresses like a photo, unlike noise)."""
    small = rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.int16)
    img = img + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    return img.clip(0, 255).astype(np.uint8)


def _regions(h: int, w: int, ids: list[int], rng: np.random.Generator, block: int = 32) -> np.ndarray:
    """(h, w) raw ids in random rectangular blocks, one id per block, ~12 ids per frame."""
    chosen = rng.choice(ids, size=min(len(ids), 12), replace=False)
    grid = rng.choice(chosen, size=(-(-h // block), -(-w // block)))
    return np.kron(grid, np.ones((block, block), grid.dtype))[:h, :w]


def _palette_png(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, (37 * i) % 256, (91 * i) % 256)])
    im.save(path)


def gta5(root: str | Path, n: int, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """``images/NNNNN.png`` + palette ``labels/NNNNN.png`` (Cityscapes ids), 1914x1052."""
    root, (h, w) = Path(root), size or SIZES["gta5"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        Image.fromarray(_picture(h, w, rng)).save(root / "images" / f"{i:05d}.png")
        _palette_png(root / "labels" / f"{i:05d}.png", _regions(h, w, _ids("gta5_19"), rng))
    return root


def cityscapes(root: str | Path, n: int, split: str = "val", seed: int = 0, size: tuple[int, int] | None = None,
               city: str = "frankfurt") -> Path:
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``, 2048x1024."""
    root, (h, w) = Path(root), size or SIZES["cityscapes"]
    img_dir, lab_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1000)
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        Image.fromarray(_picture(h, w, rng)).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(_regions(h, w, _ids("cityscapes_19"), rng).astype(np.uint8), mode="L").save(
            lab_dir / f"{stem}_gtFine_labelIds.png")
    return root


def synthia(root: str | Path, n: int, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """``RGB/NNNNNNN.png`` + 16-bit 4-channel ``GT/LABELS/NNNNNNN.png`` (class id in R), 1280x760."""
    import cv2  # 16-bit PNG writing

    root, (h, w) = Path(root), size or SIZES["synthia"]
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2000)
    for i in range(n):
        Image.fromarray(_picture(h, w, rng)).save(root / "RGB" / f"{i:07d}.png")
        ids = _regions(h, w, _ids("synthia_19"), rng).astype(np.uint16)
        inst = rng.integers(0, 2**16, (h, w), dtype=np.uint16)
        bgra = np.stack([np.zeros_like(ids), inst, ids, np.full_like(ids, 65535)], -1)  # OpenCV writes BGR(A)
        if not cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), bgra):
            raise OSError(f"could not write {root / 'GT' / 'LABELS' / f'{i:07d}.png'}")
    return root


def viper(root: str | Path, n: int, split: str = "train", seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """``{split}/img/001/001_NNNNN.jpg`` (each labelled frame and the frame before it) + palette
    ``{split}/cls/001/001_NNNNN.png`` (VIPER ids), 1920x1080; labelled frames 10 apart."""
    root, (h, w) = Path(root), size or SIZES["viper"]
    img_dir, cls_dir = root / split / "img" / "001", root / split / "cls" / "001"
    img_dir.mkdir(parents=True, exist_ok=True)
    cls_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 3000)
    for i in range(n):
        t = 10 * (i + 1)
        for frame in (t - 1, t):
            Image.fromarray(_picture(h, w, rng)).save(img_dir / f"001_{frame:05d}.jpg", quality=90)
        _palette_png(cls_dir / f"001_{t:05d}.png", _regions(h, w, _ids("viper_15"), rng))
    return root


def cityscapes_seq(root: str | Path, n: int, split: str = "train", seed: int = 0, size: tuple[int, int] | None = None,
                   city: str = "frankfurt") -> Path:
    """``leftImg8bit_sequence/{split}/{city}/*_leftImg8bit.png`` (annotated frame 19 and frame 18 of
    each sequence) + ``gtFine/{split}/{city}/*_000019_gtFine_labelIds.png``, 2048x1024."""
    root, (h, w) = Path(root), size or SIZES["cityscapes"]
    seq_dir, lab_dir = root / "leftImg8bit_sequence" / split / city, root / "gtFine" / split / city
    seq_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 4000)
    for i in range(n):
        for frame in (18, 19):
            Image.fromarray(_picture(h, w, rng)).save(seq_dir / f"{city}_{i:06d}_{frame:06d}_leftImg8bit.png")
        Image.fromarray(_regions(h, w, _ids("cityscapes_19"), rng).astype(np.uint8), mode="L").save(
            lab_dir / f"{city}_{i:06d}_000019_gtFine_labelIds.png")
    return root
