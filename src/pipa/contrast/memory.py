"""Semantic-aware memory: class-wise FIFO queues of (teacher) feature vectors from past batches
(method spec, "Semantic-aware memory"). Its contents are buffers, so they are part of the training
checkpoint and a resumed run continues with the same memory."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core.constants import IGNORE_INDEX


def all_gather_rows(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate ``features`` (n_r, D) and ``labels`` (n_r,) from every rank (rank order), so that
    every rank pushes the same entries. Without an initialised process group: unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, labels
    world = dist.get_world_size()
    n = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    pad_f = features.new_zeros(most, features.shape[1])
    pad_f[: features.shape[0]] = features
    pad_l = labels.new_full((most,), IGNORE_INDEX)
    pad_l[: labels.shape[0]] = labels
    got_f = [torch.zeros_like(pad_f) for _ in range(world)]
    got_l = [torch.zeros_like(pad_l) for _ in range(world)]
    dist.all_gather(got_f, pad_f)
    dist.all_gather(got_l, pad_l)
    feats = torch.cat([f[: int(s)] for f, s in zip(got_f, sizes)])
    labs = torch.cat([lab[: int(s)] for lab, s in zip(got_l, sizes)])
    return feats, labs


class SemanticMemory(nn.Module):
    """``num_classes`` FIFO queues of ``size_per_class`` entries of ``dim`` floats.

    ``push(features, labels)`` appends each class's rows in order; once a queue is full the oldest
    entries are overwritten, so it always holds the newest ``size_per_class`` rows of its class.
    Rows labelled 255 are dropped. ``get()`` returns all stored rows, class by class, oldest first.
    Under DDP, ``push`` all-gathers first (``gather=True``) so every rank holds the same memory.

    Shape:
        push: features (N, dim), labels (N,) int64. get: (M, dim), (M,) with M = fill().sum().
    """

    def __init__(self, num_classes: int, size_per_class: int, dim: int) -> None:
        super().__init__()
        if num_classes <= 0 or size_per_class <= 0 or dim <= 0:
            raise ValueError("num_classes, size_per_class and dim must be positive")
        self.num_classes, self.size_per_class, self.dim = num_classes, size_per_class, dim
        self.register_buffer("features", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))  # entries held

    @torch.no_grad()
    def push(self, features: Tensor, labels: Tensor, gather: bool = True) -> None:
        """Append rows (N, D) with labels (N,) to their class queues (255 rows dropped); under DDP the
        rows of every rank are gathered first (``gather``), so all ranks hold the same memory."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"memory features must be (N, {self.dim}), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"memory labels must be ({features.shape[0]},), got {tuple(labels.shape)}")
        features = features.detach().to(self.features.dtype)
        if gather:
            features, labels = all_gather_rows(features, labels)
        K, S = self.num_classes, self.size_per_class
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= K))
        try:  # a device-side assert: no host read on a GPU (there it fails at the next synchronisation)
            torch._assert_async(~bad.any(), f"memory labels must be in [0, {K}) or 255")
        except RuntimeError:  # on the CPU it fails here
            raise ValueError(f"memory labels must be in [0, {K}) or 255, got {labels[bad][:1].tolist()}") from None
        # every row's place in its class's queue, computed on the device (no per-class host reads):
        # rank = how many rows of its class came before it in this push; only the newest S survive
        dev = self.features.device
        features, labels = features.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        cls = torch.where(labels == IGNORE_INDEX, K, labels)  # K: dropped
        onehot = torch.nn.functional.one_hot(cls, K + 1)
        rank = (onehot.cumsum(0) - 1).gather(1, cls[:, None]).squeeze(1)
        n_c = onehot.sum(0)  # (K+1,)
        drop = (n_c - S).clamp_min(0)  # a class's oldest rows beyond S in this push
        keep = (cls < K) & (rank >= drop[cls])
        ptr = torch.cat([self.ptr, self.ptr.new_zeros(1)])
        slot = torch.where(keep, cls * S + (ptr[cls] + rank - drop[cls]) % S, K * S)  # K * S: a spare row, thrown away
        written = torch.zeros(K * S + 1, dtype=torch.bool, device=dev).index_fill_(0, slot, True)[: K * S]
        rows = torch.zeros(K * S + 1, self.dim, dtype=self.features.dtype, device=dev).index_add_(0, slot, features)
        flat = self.features.view(K * S, self.dim)
        flat.copy_(torch.where(written[:, None], rows[: K * S], flat))  # kept slots are distinct: rows are exact
        n = n_c[:K].clamp_max(S)
        self.ptr.copy_((self.ptr + n) % S)
        self.count.copy_((self.count + n).clamp_max(S))

    def fill(self) -> Tensor:
        """Entries held per class, (num_classes,) int64."""
        return self.count.clone()

    def get(self, per_class: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """All entries (oldest first within a class), or ``per_class`` random ones of each class."""
        feats, labels = [], []
        S = self.size_per_class
        counts, ptrs = self.count.tolist(), self.ptr.tolist()  # one host read per call
        for c in range(self.num_classes):
            n = counts[c]
            if n == 0:
                continue
            start = ptrs[c] if n == S else 0
            order = (start + torch.arange(n, device=self.features.device)) % S
            if per_class is not None and per_class < n:
                pick = torch.randperm(n, generator=generator)[:per_class].sort().values
                order = order[pick.to(order.device, non_blocking=True)]
            feats.append(self.features[c, order])
            labels.append(torch.full((order.shape[0],), c, dtype=torch.long, device=self.features.device))
        if not feats:
            return self.features.new_zeros(0, self.dim), torch.zeros(0, dtype=torch.long, device=self.features.device)
        return torch.cat(feats), torch.cat(labels)
