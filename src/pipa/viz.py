"""Colour-coding of label maps, overlays and the demo's qualitative figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def default_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours: the built-in benchmark's for its classes, then a fixed spread."""
    from .data.synthetic import PALETTE

    rng = np.random.default_rng(12345)
    extra = rng.integers(0, 256, (max(n - len(PALETTE), 0), 3))
    return np.concatenate([np.array(PALETTE, np.int64)[: min(n, len(PALETTE))], extra]).astype(np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids (255 = ignore, black) -> (H, W, 3) uint8."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[label.astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + colorize(label, palette) * alpha).astype(np.uint8)


def qualitative_figure(path: str | Path, images: list[np.ndarray], gts: list[np.ndarray],
                       preds: dict[str, list[np.ndarray]], palette: np.ndarray, class_names: list[str]) -> None:
    """Rows = examples; columns = target image, ground truth, one column per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = ["target image", "ground truth", *preds]
    n = len(images)
    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols) * w / h * 0.55, 1.25 * n + 0.8), squeeze=False)
    for r in range(n):
        panels = [images[r], colorize(gts[r], palette), *[colorize(p[r], palette) for p in preds.values()]]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
    handles = [Patch(color=palette[i] / 255, label=nm) for i, nm in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(class_names), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


class DebugImages:
    """Training callback: a grid of source, source label, target, mixed image, mix mask,
    pseudo-label and weight (first sample of the batch) as PNG and TensorBoard image.

    Runs outside the training step, on tensors the method kept in ``method.debug``."""

    ORDER = ("source", "source_label", "target", "target_label", "mixed", "mask", "pseudo_label", "weight")

    def __init__(self, folder: str | Path, writer=None, palette=None, num_classes: int = 8) -> None:
        self.folder = Path(folder)
        self.writer = writer
        self.palette = np.asarray(palette, np.uint8) if palette is not None else default_palette(num_classes)

    def panel(self, name: str, t) -> np.ndarray:
        x = t[0].detach().float().cpu()
        if name in ("source", "target", "mixed"):
            return (x.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        if name in ("mask", "weight"):
            g = (x.clamp(0, 1).numpy() * 255).astype(np.uint8)
            return np.repeat(g[..., None], 3, -1)
        return colorize(x.long().clamp(0, 255).numpy().astype(np.uint8), self.palette)

    def __call__(self, debug: dict, iteration: int) -> None:
        panels = [self.panel(k, debug[k]) for k in self.ORDER if k in debug]
        if not panels:
            return
        from PIL import Image

        grid = np.concatenate(panels, 1)
        self.folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self.folder / f"{iteration:06d}.png")
        if self.writer is not None:
            self.writer.add_image("debug", grid, iteration, dataformats="HWC")


def embedding_figure(path: str | Path, points: dict[str, tuple[np.ndarray, np.ndarray]], palette: np.ndarray,
                     class_names: list[str], notes: dict[str, str] | None = None) -> None:
    """One scatter panel per method: 2-D projected pixel embeddings ``(N, 2)`` coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 4.4), squeeze=False)
    for ax, (name, (xy, lab)) in zip(axes[0], points.items()):
        ax.scatter(xy[:, 0], xy[:, 1], c=palette[lab] / 255, s=3, alpha=0.6, linewidths=0)
        ax.set_title(f"{name}" + (f"\n{notes[name]}" if notes and name in notes else ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=palette[i] / 255, label=nm) for i, nm in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(class_names), 4 * len(points)), fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07 * (2 if len(points) == 1 else 1), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
