"""pipa: unsupervised domain adaptive semantic segmentation (PiPa++), for images and video.

    import pipa
    seg = pipa.load("runs/gta2cs_pipa")     # trained weights -> a Segmenter (pipa.api)
    labels = seg.predict(["frame.png"])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(path: Any, which: str = "student", device: Any = None, batch_size: int = 4) -> Any:
    """Trained weights (a run folder, its ``best/``, exported weights) -> a
    :class:`pipa.api.Segmenter` with ``predict`` / ``predict_proba`` (see :func:`pipa.api.load`)."""
    from .api import load as _load

    return _load(path, which, device, batch_size)
