"""The Python API: load trained weights and segment images.

    import pipa
    seg = pipa.load("runs/gta2cs_pipa")              # a run folder, its best/, or exported weights
    labels = seg.predict(["a.png", "b.png"])         # (N, H, W) int64 class ids, each at its own size
    probs = seg.predict_proba(torch.rand(2, 3, 512, 1024))   # (N, K, H, W)

``images`` may be a float tensor (N, 3, H, W) or (3, H, W) of RGB values in [0, 1] (the form every
other input is converted to), a uint8 array (H, W, 3) or (N, H, W, 3), a PIL image, a file path,
or a list of these (images of different sizes are segmented one by one). Predictions follow the
evaluation protocol of the weights' run (``config.yaml`` next to them: input resize, whole image or
sliding window, upsampling to the input size); without one, the whole image at its own size.
Inference runs on the GPU when there is one (``device`` to choose), in inference mode, in batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import EvalConfig
from .core.tensors import class_argmax
from .models import Segmentor


class Segmenter:
    """A loaded segmentor with its evaluation protocol: :meth:`predict`, :meth:`predict_proba`."""

    def __init__(self, model: Segmentor, protocol: EvalConfig | None = None, device: str | torch.device | None = None,
                 batch_size: int = 4) -> None:
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.device, self.batch_size = model.to(dev).eval(), dev, batch_size
        self.protocol = protocol or EvalConfig()

    @property
    def class_names(self) -> list[str]:
        """The class of each id the predictions hold."""
        return list(self.model.class_names)

    @torch.inference_mode()
    def predict_proba(self, images: Any) -> Tensor | list[Tensor]:
        """Class probabilities (N, K, H, W) at each input's own size (a list when sizes differ)."""
        batches = _as_batches(images)
        out = [self._probs(b) for b in batches]
        return out[0] if len(out) == 1 else [p for b in out for p in b]

    def predict(self, images: Any) -> Tensor | list[Tensor]:
        """Class ids (N, H, W) int64 at each input's own size (a list when sizes differ)."""
        probs = self.predict_proba(images)
        if isinstance(probs, list):
            return [class_argmax(p, 0) for p in probs]
        return class_argmax(probs)

    def _probs(self, images: Tensor) -> Tensor:
        from .evaluation.protocols import protocol_logits

        p = self.protocol
        outs = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i:i + self.batch_size].to(self.device)
            logits = protocol_logits(self.model, x, tuple(x.shape[-2:]), p.input_size, p.mode, p.crop, p.stride,
                                     p.align_corners)
            outs.append(logits.float().softmax(1).cpu())
        return torch.cat(outs)


def _to_tensor(x: Any) -> Tensor:
    """One input -> (N, 3, H, W) float in [0, 1]."""
    from PIL import Image

    if isinstance(x, (str, Path)):
        from .data.io import read_rgb

        x = read_rgb(x)
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("RGB"))
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 (H, W, 3) or (N, H, W, 3), got {x.dtype} {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255
        return (t.permute(2, 0, 1)[None] if t.dim() == 3 else t.permute(0, 3, 1, 2)).contiguous()
    if torch.is_tensor(x):
        if not x.is_floating_point() or x.dim() not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"tensor images must be float (3, H, W) or (N, 3, H, W) in [0, 1], got {x.dtype} "
                             f"{tuple(x.shape)}")
        return x[None] if x.dim() == 3 else x
    raise TypeError(f"cannot segment a {type(x).__name__}: give tensors, uint8 arrays, PIL images or paths")


def _as_batches(images: Any) -> list[Tensor]:
    """Inputs grouped into batches of one size each, in order."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    tensors = [_to_tensor(x) for x in items]
    if all(t.shape[-2:] == tensors[0].shape[-2:] for t in tensors):
        return [torch.cat(tensors)]
    return tensors


def load(path: str | Path, which: str = "student", device: str | torch.device | None = None,
         batch_size: int = 4) -> Segmenter:
    """Trained weights -> :class:`Segmenter`. ``path``: a run folder (``which``: ``student``, the
    exported weights, or ``teacher``, the EMA teacher of its ``checkpoint.pt``), its ``best/``, a
    folder written by ``save_pretrained``/``pipa export``. The run's ``config.yaml`` (in the folder
    or one up) gives the evaluation protocol."""
    from .config import load_config

    from .models.hub import config_next_to, resolve_weights

    p = resolve_weights(path)  # a hub id (owner/name[@revision]) -> its cached snapshot
    folder = p if p.is_dir() else p.parent
    cfg_file = config_next_to(folder)
    protocol = load_config(cfg_file).eval if cfg_file is not None else None
    if which == "student":
        model = Segmentor.from_pretrained(folder)
    elif which == "teacher":
        from .engine.checkpoint import segmentor_from_checkpoint

        model = segmentor_from_checkpoint(folder, "teacher")[0]
    else:
        raise ValueError(f"which must be student or teacher, got {which!r}")
    return Segmenter(model, protocol, device, batch_size)



def train(config: str | Path, overrides: list[str] | dict[str, Any] | None = None, resume: bool = False,
          **keys: Any) -> Any:
    """``pipa train`` from Python: a preset name or YAML path, overrides as ``["key=value"]`` or
    ``{"key": value}`` and as keyword arguments with ``__`` for the dots
    (``train__iterations=100`` is ``train.iterations=100``). Validated like the command line (a
    typo names the key). Returns the run's ``TrainResult``."""
    import yaml

    from .config import load_config, resolve_preset
    from .engine.trainer import train as run

    def dump_value(v: Any) -> str:  # the YAML an override's value is parsed back from
        return yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()

    items: list[str] = []
    if isinstance(overrides, dict):
        items += [f"{k}={dump_value(v)}" for k, v in overrides.items()]
    elif overrides is not None:
        if isinstance(overrides, str):
            raise TypeError("overrides: a list of 'key=value' strings or a dict, not one string")
        items += list(overrides)
    items += [f"{k.replace('__', '.')}={dump_value(v)}" for k, v in keys.items()]
    return run(load_config(resolve_preset(str(config)), items), resume=resume)
