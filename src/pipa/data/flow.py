"""Optical flow computed by pipa (``pipa flow``): the backward flow from each frame t to frame t−K,
in the convention the loaders use — pixel ``p`` of frame t shows frame t−K at ``p + flow(p)``,
``(u, v)`` in pixels — from a folder of frames or a video file, with OpenCV's estimators (CPU).

Formats: ``npy`` (``DIR/<frame stem>.npy``, float32 (H, W, 2)), ``davsn`` (DA-VSN/TPS: int16 of
flow × 10, ``DIR/<frame stem>_int16_x10.npy``, read by the Cityscapes-Seq loader with
``flow_format=npy``), ``kitti`` (16-bit PNG, ``u = (R − 2¹⁵)/64``, ``v = (G − 2¹⁵)/64``, B = valid).
Finished files are skipped, so a stopped run continues; frames are processed in parallel.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import DatasetError, read_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
METHODS = ("dis", "dis_fast", "farneback")
FORMATS = ("npy", "davsn", "kitti")


def _cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("pipa flow needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def estimate_flow(frame: np.ndarray, previous: np.ndarray, method: str = "dis") -> np.ndarray:
    """Backward flow of ``frame`` (t) to ``previous`` (t−K), both (H, W, 3) uint8 RGB: (H, W, 2)
    float32 with ``frame[p] ≈ previous[p + flow(p)]``. ``dis``: OpenCV's dense inverse search
    (medium preset), ``dis_fast`` (fast preset), ``farneback``."""
    cv2 = _cv2()
    if frame.shape != previous.shape:
        raise ValueError(f"frames of different sizes: {frame.shape} and {previous.shape}")
    a = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(previous), cv2.COLOR_RGB2GRAY)
    if method in ("dis", "dis_fast"):
        preset = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM if method == "dis" else cv2.DISOPTICAL_FLOW_PRESET_FAST
        flow = cv2.DISOpticalFlow_create(preset).calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 5, 5, 1.1, 0)
    else:
        raise ValueError(f"unknown flow method {method!r}; choose from {', '.join(METHODS)}")
    return np.asarray(flow, np.float32)


def resize_flow_np(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 2) -> (H, W, 2) bilinear, u scaled by W/w and v by H/h."""
    cv2 = _cv2()
    h, w = flow.shape[:2]
    H, W = size
    out = cv2.resize(flow, (W, H), interpolation=cv2.INTER_LINEAR)
    return (out * np.array([W / w, H / h], np.float32)).astype(np.float32)


def output_path(out: Path, stem: str, fmt: str) -> Path:
    """Where frame ``stem``'s flow goes in format ``fmt``."""
    return out / {"npy": f"{stem}.npy", "davsn": f"{stem}_int16_x10.npy", "kitti": f"{stem}.png"}[fmt]


def write_flow(path: Path, flow: np.ndarray, fmt: str) -> None:
    """Write (H, W, 2) float flow in ``fmt`` atomically (a killed run leaves no half file)."""
    from ..core.io import atomic_write

    if fmt == "npy":
        atomic_write(path, lambda p: _npsave(p, flow.astype(np.float32)))
    elif fmt == "davsn":
        atomic_write(path, lambda p: _npsave(p, np.clip(np.round(flow * 10), -32768, 32767).astype(np.int16)))
    elif fmt == "kitti":
        cv2 = _cv2()
        enc = np.clip(np.round(flow * 64 + 2**15), 0, 65535).astype(np.uint16)
        bgr = np.stack([np.ones_like(enc[..., 0]), enc[..., 1], enc[..., 0]], -1)  # B = valid, G = v, R = u
        atomic_write(path, lambda p: _imwrite(cv2, p, bgr))
    else:
        raise ValueError(f"unknown flow format {fmt!r}; choose from {', '.join(FORMATS)}")


def _npsave(path, arr: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    with open(path, "wb") as fh:
        np.save(fh, arr)


def _imwrite(cv2, path, arr) -> None:  # type: ignore[no-untyped-def]
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"could not encode {path}")
    Path(path).write_bytes(buf.tobytes())


def list_frames(source: Path) -> list[tuple[str, Path | int]]:
    """(stem, file) per frame of a folder (sorted by name), or (stem, index) per frame of a video."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"{source}: no frames ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return [(p.stem, p) for p in files]
    if source.suffix.lower() in VIDEO_EXTENSIONS and source.is_file():
        cap = _cv2().VideoCapture(str(source))
        n = int(cap.get(_cv2().CAP_PROP_FRAME_COUNT))
        cap.release()
        if n <= 0:
            raise DatasetError(f"{source}: no frames could be read from this video")
        return [(f"{source.stem}_{i:06d}", i) for i in range(n)]
    raise DatasetError(f"{source}: not a folder of frames or a video file ({', '.join(VIDEO_EXTENSIONS)})")


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    cap.release()


def _job(args: tuple) -> str:
    frame, prev, path, fmt, method, size, *rest = args
    crop_bottom = rest[0] if rest else 0  # SYNTHIA-Seq: the rows its loader crops off the frames
    a = read_rgb(frame) if isinstance(frame, Path) else frame
    b = read_rgb(prev) if isinstance(prev, Path) else prev
    if crop_bottom:
        a, b = a[: a.shape[0] - crop_bottom], b[: b.shape[0] - crop_bottom]
    flow = estimate_flow(a, b, method)
    if size is not None:
        flow = resize_flow_np(flow, size)
    write_flow(path, flow, fmt)
    return str(path)


def compute_flows(source: str | Path, out: str | Path, offset: int = 1, fmt: str = "npy", method: str = "dis",
                  size: tuple[int, int] | None = None, workers: int = 0, progress: bool = True) -> dict[str, int]:
    """Backward flow t -> t−``offset`` for every frame t ≥ ``offset`` of ``source`` into ``out``.
    Existing outputs are skipped. Returns ``{"written": n, "skipped": m, "frames": total}``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown flow format {fmt!r}; choose from {', '.join(FORMATS)}")
    if method not in METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose from {', '.join(METHODS)}")
    if offset < 1:
        raise ValueError(f"--offset must be >= 1, got {offset}")
    source, out = Path(source), Path(out)
    frames = list_frames(source)
    out.mkdir(parents=True, exist_ok=True)
    decoded: list[np.ndarray] | None = list(_video_frames(source)) if not source.is_dir() else None
    jobs = []
    for t in range(offset, len(frames)):
        stem = frames[t][0]
        path = output_path(out, stem, fmt)
        if path.is_file():
            continue
        cur, prev = frames[t][1], frames[t - offset][1]
        if decoded is not None:
            if t >= len(decoded):
                break
            cur, prev = decoded[t], decoded[t - offset]
        jobs.append((cur, prev, path, fmt, method, size))
    skipped = max(0, len(frames) - offset) - len(jobs)
    _run_jobs(jobs, method, workers, progress)
    return {"written": len(jobs), "skipped": skipped, "frames": len(frames)}


DATASET_LAYOUTS = ("cityscapes_seq", "viper", "synthia_seq")


def compute_dataset_flows(dataset: str, root: str | Path, out: str | Path, split: str = "train", offset: int = 1,
                          method: str = "dis", size: tuple[int, int] | None = None, workers: int = 0,
                          progress: bool = True) -> dict[str, int]:
    """The flow of every annotated frame of a video dataset in its original layout (Cityscapes-Seq,
    VIPER, SYNTHIA-Seq) to its frame t−``offset``, written into ``out`` under the names and in the
    format (DA-VSN int16 ×10 ``.npy``) its loader reads with ``flow_root=out``. Existing files are skipped."""
    from . import benchmarks as B

    if dataset not in DATASET_LAYOUTS:
        raise ValueError(f"unknown video dataset {dataset!r}; choose from {', '.join(DATASET_LAYOUTS)}")
    if method not in METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose from {', '.join(METHODS)}")
    out = Path(out)
    kw: dict = {"frame_offset": offset, "flow_root": out, "check": False}
    if dataset == "cityscapes_seq":
        ds = B.CityscapesSeq(root, split=split, **kw)
    elif dataset == "viper":
        ds = B.Viper(root, split=split, **kw)
    else:
        ds = B.SynthiaSeq(root, **kw)
    crop = int(getattr(ds, "crop_bottom", 0) or 0)  # flow of the frames as the loader crops them
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for e in ds.entries:
        assert e.flow is not None and e.prev is not None
        if not e.prev.is_file():
            raise DatasetError(f"{e.prev}: missing neighbour frame (t-{offset}) of {e.image}")
        if not e.flow.is_file():
            jobs.append((e.image, e.prev, e.flow, "davsn", method, size, crop))
    _run_jobs(jobs, method, workers, progress)
    return {"written": len(jobs), "skipped": len(ds.entries) - len(jobs), "frames": len(ds.entries)}


def _run_jobs(jobs: list[tuple], method: str, workers: int, progress: bool) -> None:
    """Estimate and write each job's flow, in ``workers`` processes, with a progress bar."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"flow ({method})", unit="frame")
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_job, jobs, chunksize=4):
                if bar is not None:
                    bar.update(1)
    else:
        for j in jobs:
            _job(j)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
