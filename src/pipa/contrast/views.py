"""Geometry shared by the contrastive terms: the two overlapping crops of the patch term (corners
on the feature stride, so feature cells line up exactly; the published code computed overlap
indices for stride 8 on stride-2 features), label pooling to feature resolution, and flow
warping between frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.constants import IGNORE_INDEX
from ..core.syncs import on_host


@dataclass(frozen=True)
class Box:
    """A crop in pixels: top-left ``(y, x)``, size ``(h, w)``."""

    y: int
    x: int
    h: int
    w: int

    def area(self) -> int:
        """Pixels in the box."""
        return self.h * self.w

    def cells(self, stride: int) -> tuple[slice, slice]:
        """This box in the feature grid of the whole image (needs stride-aligned corners)."""
        for v in (self.y, self.x, self.h, self.w):
            if v % stride:
                raise ValueError(f"{self} is not aligned to stride {stride}")
        return slice(self.y // stride, (self.y + self.h) // stride), slice(self.x // stride, (self.x + self.w) // stride)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ih = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    iw = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    inter = ih * iw
    return inter / (a.area() + b.area() - inter)


def _check_crop(height: int, width: int, crop_h: int, crop_w: int, stride: int) -> tuple[int, int]:
    """The crop's corner positions on the stride grid: (rows, columns); raises if it cannot fit."""
    if crop_h % stride or crop_w % stride:
        raise ValueError(f"crop size {crop_h}x{crop_w} must be a multiple of the feature stride {stride}")
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} does not fit in {height}x{width}")
    return (height - crop_h) // stride + 1, (width - crop_w) // stride + 1


def sample_boxes(n: int, height: int, width: int, crop_h: int, crop_w: int, stride: int,
                 generator: torch.Generator | None = None) -> list[Box]:
    """``n`` independent ``crop_h × crop_w`` crops, corners uniform on multiples of ``stride``: one
    draw for all (the patch term's ``student_teacher`` view)."""
    ny, nx = _check_crop(height, width, crop_h, crop_w, stride)
    r = on_host(torch.randint(0, ny * nx, (n,), generator=generator)).tolist()
    return [Box(int(v // nx) * stride, int(v % nx) * stride, crop_h, crop_w) for v in r]


def sample_view_pair(height: int, width: int, crop_h: int, crop_w: int, stride: int,
                     iou_range: tuple[float, float] = (0.1, 1.0), generator: torch.Generator | None = None,
                     tries: int = 100) -> tuple[Box, Box]:
    """Two ``crop_h × crop_w`` crops of an ``height × width`` image, corners on multiples of
    ``stride``, whose IoU lies in ``iou_range`` (rejection sampling; the overlap is never empty)."""
    ny, nx = _check_crop(height, width, crop_h, crop_w, stride)
    lo, hi = iou_range

    def draw() -> Box:
        r = on_host(torch.randint(0, ny * nx, (1,), generator=generator)).item()
        return Box(int(r // nx) * stride, int(r % nx) * stride, crop_h, crop_w)

    first = draw()
    for _ in range(tries):
        second = draw()
        iou = box_iou(first, second)
        if lo <= iou <= hi and iou > 0:
            return first, second
    return first, first  # IoU 1 is always admissible


def overlap_cells(a: Box, b: Box, stride: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Feature-cell slices of the overlap of ``a`` and ``b``, in ``a``'s own feature map and in
    ``b``'s: ``fa[..., sa[0], sa[1]]`` and ``fb[..., sb[0], sb[1]]`` cover the same image cells."""
    y0, y1 = max(a.y, b.y), min(a.y + a.h, b.y + b.h)
    x0, x1 = max(a.x, b.x), min(a.x + a.w, b.x + b.w)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"crops {a} and {b} do not overlap")

    def local(box: Box) -> tuple[slice, slice]:
        return (slice((y0 - box.y) // stride, (y1 - box.y) // stride),
                slice((x0 - box.x) // stride, (x1 - box.x) // stride))

    for v in (a.y, a.x, b.y, b.x):
        if v % stride:
            raise ValueError(f"crop corners must be multiples of the stride {stride}: {a}, {b}")
    return local(a), local(b)


def pool_labels(labels: Tensor, stride: int, num_classes: int) -> Tensor:
    """Majority label of each ``stride × stride`` cell (255 counts as its own value, so a cell that
    is mostly ignored stays ignored; 255 is never turned into a class; ties go to the lower class
    id, ignore last). (B, H, W) -> (B, ⌈H/s⌉, ⌈W/s⌉): a map that is not a multiple of the stride
    (an uncropped 1914-wide GTA5 frame) gets partial last cells, as the encoder's padded convolutions do."""
    if stride == 1:
        return labels.long()
    B, H, W = labels.shape
    h, w, K1 = -(-H // stride), -(-W // stride), num_classes + 1
    dev = labels.device
    # each pixel's bin (image, cell, value) with 255 and out-of-range ids as value K (counted last);
    # int32 counts added in place: no host read of the maximum, and ~2x faster than a scatter of int64
    idx = labels.long().masked_fill((labels < 0) | (labels >= num_classes), num_classes)
    cell = ((torch.arange(H, device=dev) // stride)[:, None] * w + (torch.arange(W, device=dev) // stride)[None, :]) * K1
    idx = idx.add_(cell).add_((torch.arange(B, device=dev) * (h * w * K1))[:, None, None]).reshape(-1)
    ones = torch.ones(1, dtype=torch.int32, device=dev).expand(idx.numel())
    counts = torch.zeros(B * h * w * K1, dtype=torch.int32, device=dev).index_add_(0, idx, ones)
    out = counts.view(B, h, w, K1).argmax(-1)
    return out.masked_fill(out == num_classes, IGNORE_INDEX)


def flow_to_cells(flow: Tensor, valid: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Pixel flow (B, 2, H, W) and its validity (B, H, W) -> flow in feature cells (B, 2, h, w)
    (the mean over each cell, divided by the stride) and a cell validity (every pixel valid)."""
    f = F.avg_pool2d(flow.float(), stride, stride, ceil_mode=True) / stride
    v = F.avg_pool2d(valid.float().unsqueeze(1), stride, stride, ceil_mode=True).squeeze(1) > 0.999
    return f, v


def warp_backward(prev: Tensor, flow: Tensor, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
    """Sample ``prev`` (B, C, h, w), a map of frame τ-k, at ``u + flow(u)`` for every cell ``u`` of
    frame τ (``flow`` (B, 2, h, w) in cells, channel 0 = x). ``grid_sample`` with border padding;
    returns the warped map and an in-bounds mask (B, h, w)."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    px, py = xs + flow[:, 0], ys + flow[:, 1]
    inb = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    grid = torch.stack([(px + 0.5) / w * 2 - 1, (py + 0.5) / h * 2 - 1], -1)
    out = F.grid_sample(prev.to(grid.dtype), grid, mode=mode, padding_mode="border", align_corners=False)
    return out, inb


def block_ids(b: int, ys: slice, xs: slice, h: int, w: int) -> Tensor:
    """Flat indices ``b·h·w + y·w + x`` of a block of cells of a (B, h, w) grid, row-major: (n,) int64."""
    yy, xx = torch.meshgrid(torch.arange(ys.start, ys.stop), torch.arange(xs.start, xs.stop), indexing="ij")
    return (b * h * w + yy * w + xx).reshape(-1)
