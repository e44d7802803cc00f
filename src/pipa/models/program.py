"""Deployable graphs of a segmentor: ``images (B, 3, H, W) RGB in [0, 1] -> logits (B, K, H, W)`` at
the input's size (normalisation included; HRDA's fusion and sliding windows included).

- ``model.pt2``: a ``torch.export`` program; ``torch.export.load(path).module()(images)`` runs it
  with torch alone.
- ``model.onnx`` (optional ``onnx`` + ``onnxscript`` packages): input ``images``, output ``logits``;
  checked under ``onnxruntime`` when it is installed.

Batch, height and width are dynamic (height and width from 64 pixels: two cells at the encoder's
coarsest stride). A model whose graph cannot keep a symbolic size (HRDA's windows depend on the
size) is exported for the example size only, and the result says so. Neither graph applies an
evaluation protocol (e.g. Cityscapes' downscale to 1024x512): resize the input first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.io import first_line
from .segmentor import Segmentor

MIN_SIDE, MAX_SIDE = 64, 8192


class LogitsOnly(nn.Module):
    """``images -> logits`` of a :class:`Segmentor` in eval mode (what the graph holds)."""

    def __init__(self, model: Segmentor) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


@dataclass
class Exported:
    """What :func:`export_program` wrote: ``paths``; ``dynamic_size`` (False: only the example
    (H, W) is accepted, ``why`` says why); ``onnx_checked``: the ONNX logits were compared with
    the model's under onnxruntime (max absolute difference ``onnx_max_diff``)."""

    paths: list[Path] = field(default_factory=list)
    dynamic_size: bool = True
    why: str = ""
    onnx_checked: bool = False
    onnx_max_diff: float = 0.0


def _export(wrapper: nn.Module, example: Tensor) -> tuple[torch.export.ExportedProgram, bool, str]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    try:
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch, 2: height, 3: width}})
        return program, True, ""
    except Exception as e:  # a graph that branches on the size: export that size only
        why = first_line(e, 200)
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
        return program, False, why


def export_program(model: Segmentor, out_dir: str | Path, height: int, width: int, torch_export: bool = True,
                   onnx: bool = False) -> Exported:
    """Write ``model.pt2`` (``torch_export``) and/or ``model.onnx`` (``onnx``), traced on a
    (2, 3, ``height``, ``width``) example; each graph is checked against the eager model on another
    batch size and, where the size is dynamic, another image size."""
    from ..core.io import atomic_write

    if min(height, width) < MIN_SIDE:
        raise ValueError(f"the example size must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}")
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model)
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    program, dynamic, why = _export(wrapper, example)
    done = Exported(dynamic_size=dynamic, why=why)
    checks = [torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(1))]
    if dynamic:  # another size, not a multiple of 32
        checks.append(torch.rand(1, 3, height + 40, width - 24, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        wants = [wrapper(x) for x in checks]
    if torch_export:
        path = out_dir / "model.pt2"
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: the temp name does not end in .pt2
                torch.export.save(program, fh)

        atomic_write(path, save)
        loaded = torch.export.load(str(path)).module()
        for x, want in zip(checks, wants):
            got = loaded(x)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"{path}: the exported program's logits differ from the model's for input "
                                   f"{tuple(x.shape)}")
        done.paths.append(path)
    if onnx:
        path = out_dir / "model.onnx"
        atomic_write(path, lambda p: torch.onnx.export(program, (example,), str(p), dynamo=True, input_names=["images"],
                                                       output_names=["logits"], verbose=False))
        done.paths.append(path)
        try:
            import onnxruntime
        except ImportError:
            return done
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for x, want in zip(checks, wants):
            (got,) = session.run(["logits"], {"images": x.numpy()})
            diff = float((torch.from_numpy(got) - want).abs().max()) if got.shape == tuple(want.shape) else float("inf")
            if diff > 1e-3:
                raise RuntimeError(f"{path}: onnxruntime's logits differ from the model's for input {tuple(x.shape)} "
                                   f"(max difference {diff:.3g})")
            done.onnx_max_diff = max(done.onnx_max_diff, diff)
        done.onnx_checked = True
    return done
