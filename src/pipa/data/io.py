"""File readers for the real datasets. Every failure is a :class:`DatasetError` naming the file.

- 8-bit images and label maps through PIL (palette PNGs give their indices: GTA5, VIPER ``cls``,
  Cityscapes ``labelIds``).
- 16-bit multi-channel PNGs (SYNTHIA labels: class id in the red channel; KITTI flow): PIL
  silently keeps only the high byte of each 16-bit sample, so every SYNTHIA class id reads as 0.
  OpenCV is used when installed (``pip install opencv-python-headless``); otherwise a small
  NumPy PNG decoder does it (exact, slower on rows with the Average/Paeth filters).
- Optical flow: DA-VSN/TPS ``int16(flow × 10)`` ``.npy`` files and KITTI 16-bit PNGs, resized
  to a target grid with each component scaled by its own axis ratio.
"""

from __future__ import annotations

import struct
import warnings
import zlib
import os
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


T = TypeVar("T")


class DatasetError(ValueError):
    """A problem with a dataset on disk (the message names the file)."""


def _with_image(path: str | Path, failure: str, read: Callable[[Image.Image], T]) -> T:
    """``read(opened image)``, with every failure turned into a one-line error naming the file."""
    try:
        with Image.open(path) as im:
            return read(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: {failure} ({exc})") from None


def default_cache_dir() -> Path:
    """Where pipa caches rendered benchmarks and label checks (``$PIPA_CACHE``, else ~/.cache/pipa)."""
    return Path(os.environ.get("PIPA_CACHE", Path.home() / ".cache" / "pipa"))


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header (no decoding)."""
    return _with_image(path, "unreadable image", lambda im: (im.height, im.width))


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    return _with_image(path, "corrupt or unreadable image", lambda im: np.asarray(im.convert("RGB")))


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> ``size`` (H', W') uint8, bilinear with half-pixel centres and no
    antialiasing: OpenCV's ``INTER_LINEAR``, what mmcv.imresize (the reference pipelines) uses.
    Deterministic whatever the thread count; without OpenCV, PyTorch's bilinear on floats."""
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return img
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        _warn_no_opencv()
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0]
        return out.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR)


def read_index_png(path: str | Path) -> np.ndarray:
    """A single-channel label map (palette indices or grey values), (H, W) integer array."""

    def read(im: Image.Image) -> np.ndarray:
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "1"):
            raise DatasetError(f"{path}: label map has mode {im.mode}, expected a single-channel (palette/grey) PNG")
        return np.asarray(im)

    return _with_image(path, "corrupt or unreadable label map", read)


# -- 16-bit PNG ---------------------------------------------------------------------------------
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _unfilter(data: bytes, height: int, stride: int, bpp: int, path: str | Path) -> np.ndarray:
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    pos = 0
    for y in range(height):
        ftype = data[pos]
        row = np.frombuffer(data, np.uint8, stride, pos + 1).astype(np.int64)
        pos += stride + 1
        if ftype == 0:
            cur = row
        elif ftype == 1:  # Sub: cumulative sum per byte position within the pixel
            cur = np.cumsum(row.reshape(-1, bpp), 0).reshape(-1) % 256
        elif ftype == 2:  # Up
            cur = (row + prev) % 256
        elif ftype in (3, 4):  # Average / Paeth depend on the reconstructed left byte
            r, up, cur_l = row.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                left = cur_l[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    cur_l[i] = (r[i] + (left + up[i]) // 2) % 256
                else:
                    ul = up[i - bpp] if i >= bpp else 0
                    cur_l[i] = (r[i] + _paeth(left, up[i], ul)) % 256
            cur = np.asarray(cur_l, np.int64)
        else:
            raise DatasetError(f"{path}: corrupt PNG (filter type {ftype} in row {y})")
        out[y] = cur
        prev = cur
    return out


def _decode_png16(path: str | Path) -> np.ndarray:
    """Minimal PNG decoder for 16-bit, non-interlaced images: (H, W, C) uint16."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DatasetError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    try:
        while pos < len(data):
            (n,) = struct.unpack(">I", data[pos:pos + 4])
            kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
            if len(body) != n:
                raise DatasetError(f"{path}: corrupt PNG (truncated {kind.decode(errors='replace')} chunk)")
            pos += 12 + n
            if kind == b"IHDR":
                header = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
        if header is None:
            raise DatasetError(f"{path}: corrupt PNG (no IHDR chunk)")
        w, h, depth, ctype, _, _, interlace = header
        if depth != 16 or ctype not in _CHANNELS or interlace:
            raise DatasetError(f"{path}: expected a 16-bit non-interlaced PNG, got bit depth {depth}, colour type {ctype}")
        c = _CHANNELS[ctype]
        raw = zlib.decompress(b"".join(idat))
    except (struct.error, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt PNG ({exc})") from None
    stride = w * c * 2
    if len(raw) != h * (stride + 1):
        raise DatasetError(f"{path}: corrupt PNG (image data has {len(raw)} bytes, expected {h * (stride + 1)})")
    rows = _unfilter(raw, h, stride, c * 2, path)
    return rows.view(">u2").reshape(h, w, c).astype(np.uint16)


_WARNED: set[str] = set()


def _warn_no_opencv() -> None:
    if "cv2" not in _WARNED:
        _WARNED.add("cv2")
        warnings.warn("OpenCV is not installed (pip install opencv-python-headless, a pipa dependency): 16-bit PNGs "
                      "are read by a slow pure-Python decoder (seconds per SYNTHIA label)", RuntimeWarning, stacklevel=3)


def read_png16(path: str | Path) -> np.ndarray:
    """A 16-bit PNG with its full sample values, (H, W, C) uint16 in RGB(A) order."""
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        _warn_no_opencv()
        return _decode_png16(path)
    if not Path(path).is_file():
        raise DatasetError(f"{path}: file not found")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(f"{path}: corrupt or unreadable PNG")
    if arr.dtype != np.uint16:
        raise DatasetError(f"{path}: expected a 16-bit PNG, got {arr.dtype}")
    if arr.ndim == 2:
        return arr[..., None]
    order = [2, 1, 0, 3] if arr.shape[2] == 4 else [2, 1, 0]  # OpenCV gives BGR(A)
    return arr[..., order].copy()


# -- optical flow -------------------------------------------------------------------------------
def read_flow_npy(path: str | Path) -> np.ndarray:
    """DA-VSN/TPS flow: ``int16(flow * 10)`` of shape (H, W, 2) -> float32 (2, H, W) in pixels."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt flow file ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise DatasetError(f"{path}: flow must be (H, W, 2), got {arr.shape}")
    return (arr.astype(np.float32) / 10.0).transpose(2, 0, 1).copy()


def read_flow_kitti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """KITTI 16-bit PNG flow: ``u = (R - 2^15) / 64``, ``v = (G - 2^15) / 64``, valid = B > 0.
    Returns float32 (2, H, W) and bool (H, W)."""
    arr = read_png16(path)
    if arr.shape[2] < 3:
        raise DatasetError(f"{path}: KITTI flow needs 3 channels, got {arr.shape[2]}")
    a = arr.astype(np.float32)
    flow = np.stack([(a[..., 0] - 2**15) / 64.0, (a[..., 1] - 2**15) / 64.0])
    return flow, arr[..., 2] > 0


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (2, h, w) or (B, 2, h, w) pixel flow to ``size`` (H, W), with u scaled
    by W/w and v by H/h (each by its own axis: exact also when the aspect ratio changes)."""
    squeeze = flow.dim() == 3
    f = flow.unsqueeze(0) if squeeze else flow
    h, w = f.shape[-2:]
    out = F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False)
    out = out * torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype).view(1, 2, 1, 1)
    return out[0] if squeeze else out
