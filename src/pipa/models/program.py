"""A deployable graph of a segmentor: ``torch.export`` of ``images (B, 3, H, W) in [0, 1] -> logits
(B, K, H, W)`` (normalisation included; HRDA's fusion and sliding windows included), saved as
``model.pt2``; ``torch.export.load(path).module()(images)`` runs it without pipa. With the optional
``onnx`` and ``onnxscript`` packages the same program is also written as ONNX."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .segmentor import Segmentor


class LogitsOnly(nn.Module):
    """``images -> logits`` of a :class:`Segmentor` in eval mode (what the graph holds)."""

    def __init__(self, model: Segmentor) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


def export_program(model: Segmentor, out_dir: str | Path, height: int, width: int, onnx: bool = False) -> list[Path]:
    """Write ``model.pt2`` (and ``model.onnx``) for inputs of (H, W) = (``height``, ``width``), any batch
    size; checks the saved program against the eager model on a random batch. Returns the paths."""
    from ..core.io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model)
    example = torch.rand(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
    path = out_dir / "model.pt2"
    atomic_write(path, lambda p: torch.export.save(program, str(p)))
    check = torch.rand(3, 3, height, width)
    with torch.no_grad():
        want = wrapper(check)
    got = torch.export.load(str(path)).module()(check)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{path}: the exported program's logits differ from the model's "
                           f"(max {float((got - want).abs().max()):.3g})")
    written = [path]
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
        onnx_path = out_dir / "model.onnx"
        torch.onnx.export(program, (example,), str(onnx_path), dynamo=True)
        written.append(onnx_path)
    return written
