"""pipa: unsupervised domain adaptive semantic segmentation (PiPa++), for images and video.

    import pipa
    seg = pipa.load("runs/gta2cs_pipa")     # trained weights -> a Segmenter (pipa.api)
    labels = seg.predict(["frame.png"])
    res = pipa.train("synthetic", train__iterations=200, train__out_dir="runs/mine")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "train"]


def load(path: Any, which: str = "student", device: Any = None, batch_size: int = 4) -> Any:
    """Trained weights (a run folder, its ``best/``, exported weights) -> a
    :class:`pipa.api.Segmenter` with ``predict`` / ``predict_proba`` (see :func:`pipa.api.load`)."""
    from .api import load as _load

    return _load(path, which, device, batch_size)


def train(config: Any, overrides: Any = None, resume: bool = False, **keys: Any) -> Any:
    """Train from Python: ``config`` a preset name (``"synthetic"``, ``"gta2cs_pipa"``) or a YAML
    path; ``overrides`` ``["key=value", ...]`` or ``{"key": value}``; keyword arguments are
    overrides too, with ``__`` for the dots (``train__iterations=100``). Returns the
    :class:`pipa.engine.trainer.TrainResult` (``miou``, ``out_dir``, ...); see :func:`pipa.api.train`."""
    from .api import train as _train

    return _train(config, overrides, resume, **keys)
