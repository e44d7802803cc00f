"""Projection heads ``h_pix`` / ``h_patch`` (training only; never part of the exported model)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """1×1 conv → BN → ReLU → 1×1 conv to ``dim`` channels, then L2 normalisation.

    A 1×1 conv on a map is a linear layer on its cells, so the head also takes rows of cells:
    the methods sample their cells first and project only those (much cheaper than projecting
    every cell of every map). Batch norm then normalises over the given rows.

    Shape: (N, in_channels) -> (N, dim), or (B, in_channels, h, w) -> (B, dim, h, w); unit vectors."""

    def __init__(self, in_channels: int, dim: int = 64, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            b, c, h, w = x.shape
            rows = self(x.permute(0, 2, 3, 1).reshape(-1, c))
            return rows.view(b, h, w, -1).permute(0, 3, 1, 2)
        h = self.fc1(x.float())
        if self.training and h.shape[0] < 2:  # batch statistics need two rows; use running ones
            h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, False)
        else:
            h = self.bn(h)
        return F.normalize(self.fc2(F.relu(h)), dim=1)
