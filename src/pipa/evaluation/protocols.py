"""Evaluation protocols of the published benchmarks (reference: ``datasets.md`` §2): which IoU
entries are averaged and under which name, and how logits are brought to the label grid
(input resize, whole-image or sliding-window inference, upsampling with or without
``align_corners``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.tensors import window_positions

# Cityscapes 19 trainIds of the SYNTHIA 16 and 13 classes (terrain 9, truck 14, train 16 out;
# 13 also drops wall 3, fence 4, pole 5).
CS19_IN_16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
CS19_IN_13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
S16_IN_13 = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # 16-way head indices of the 13 classes
SEQ12_IN_11 = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # SYNTHIA-Seq: fence (3) is trained, not evaluated

PROTOCOLS = ("all", "gta2cs", "syn2cs", "synseq2csseq", "viper2csseq")


def subsets(protocol: str, num_classes: int) -> list[tuple[str, list[int] | None]]:
    """(label, IoU indices or None for all) for each mIoU the protocol reports, first = headline."""
    if protocol == "all":
        return [(f"mIoU{num_classes}", None)]
    table: dict[tuple[str, int], list[tuple[str, list[int] | None]]] = {
        ("gta2cs", 19): [("mIoU19", None)],
        ("syn2cs", 19): [("mIoU16 (19-way head, mean of 16 of its 19 IoUs)", CS19_IN_16),
                         ("mIoU13 (19-way head, mean of 13 of its 19 IoUs)", CS19_IN_13)],
        ("syn2cs", 16): [("mIoU16 (16-way head)", None), ("mIoU13 (16-way head, mean of 13 of its 16 IoUs)", S16_IN_13)],
        ("syn2cs", 13): [("mIoU13 (13-way head)", None)],
        ("synseq2csseq", 12): [("mIoU11 (12-way head, fence dropped)", SEQ12_IN_11)],
        ("viper2csseq", 15): [("mIoU15", None)],
    }
    if (protocol, num_classes) not in table:
        ok = sorted(k[1] for k in table if k[0] == protocol)
        if not ok:
            raise ValueError(f"unknown evaluation protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
        raise ValueError(f"protocol '{protocol}' is defined for {ok} classes, the model has {num_classes}")
    return table[(protocol, num_classes)]


def slide_logits(model: torch.nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Sliding-window inference: logits of overlapping ``crop`` windows (``stride`` apart, the last
    one flush with the border) summed and divided by the number of windows covering each pixel."""
    B, _, H, W = images.shape
    total: Tensor | None = None
    count = images.new_zeros(1, 1, H, W)
    for y in window_positions(H, crop[0], stride[0]):
        for x in window_positions(W, crop[1], stride[1]):
            win = images[..., y:y + crop[0], x:x + crop[1]]
            out = model(win).logits.float()
            if total is None:
                total = images.new_zeros(B, out.shape[1], H, W, dtype=torch.float32)
            total[..., y:y + win.shape[-2], x:x + win.shape[-1]] += out
            count[..., y:y + win.shape[-2], x:x + win.shape[-1]] += 1
    assert total is not None
    return total / count


def protocol_logits(model: torch.nn.Module, images: Tensor, label_size: tuple[int, int], input_size: list[int] | None,
                    mode: str, crop: list[int], stride: list[int], align_corners: bool) -> Tensor:
    """Logits on the label grid: resize the input (optional), infer (whole | slide), upsample."""
    if input_size:
        images = F.interpolate(images, size=tuple(input_size), mode="bilinear", align_corners=False)
    if mode == "slide":
        logits = slide_logits(model, images, (crop[0], crop[1]), (stride[0], stride[1]))
    elif mode == "whole":
        logits = model(images).logits.float()
    else:
        raise ValueError(f"eval mode must be whole or slide, got {mode!r}")
    if tuple(logits.shape[-2:]) != tuple(label_size):
        logits = F.interpolate(logits, size=label_size, mode="bilinear", align_corners=align_corners)
    return logits
