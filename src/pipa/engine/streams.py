"""Batch streams: endless, resumable, rank-sharded iteration over a dataset (and rare class
sampling of source images), with the random horizontal flip of training batches."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate


class BatchStream:
    """Endless, resumable stream of batches: a ``DistributedSampler`` permutation per epoch
    (seeded, so every rank agrees), cut into batches; ``state()`` = (epoch, batches taken).
    With ``rcs`` (a :class:`~pipa.uda.rcs.RareClassSampler`) each batch draws (image, class) pairs."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world: int,
                 num_workers: int = 0, epoch: int = 0, offset: int = 0, rcs: Any = None) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * world:
            raise ValueError(f"dataset of {n} items is smaller than one batch ({batch_size} x {world} ranks)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.epoch, self.offset = epoch, offset
        self.rcs = rcs
        self._it: Iterator | None = None

    def _start(self) -> None:
        sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        idx = list(sampler)
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        # its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from an uninterrupted one
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self._it = iter(DataLoader(self.dataset, batch_sampler=batches[self.offset :], num_workers=self.num_workers,
                                   generator=gen))

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.rcs is not None:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank * 104_729 + self.offset)
            idx, classes = self.rcs.sample(self.batch_size, gen)
            take = getattr(self.dataset, "rare_class_item", None)  # re-crops until the class is in the crop
            items = [take(i, c, self.rcs.crop_min_pixels) if take else self.dataset[i] for i, c in zip(idx, classes)]
            batch = default_collate(items)
            batch["rcs_class"] = torch.tensor(classes)
            self.offset += 1
            return batch
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.offset, self._it = self.epoch + 1, 0, None
            return next(self)
        self.offset += 1
        return batch

    def state(self) -> list[int]:
        """[epoch, batches taken in it]: where a resumed stream starts."""
        return [self.epoch, self.offset]


def hflip(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flip a random half of the batch left-right (global RNG; flow: mirror and negate u).
    Every tensor of 3+ dims (B, ..., W) is flipped with its image."""
    b = batch["image"].shape[0]
    flip = torch.rand(b) < 0.5
    out = dict(batch)
    for k, v in batch.items():
        if not torch.is_tensor(v) or v.dim() < 3:
            continue
        f = v.flip(-1)
        if k == "flow":
            f = f * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        m = flip.view(-1, *([1] * (v.dim() - 1)))
        out[k] = torch.where(m, f, v)
    return out


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False
              ) -> dict[str, torch.Tensor]:
    """Move every tensor of ``batch`` to ``device`` (non-blocking; from pinned memory when the
    DataLoader pinned it); with ``channels_last`` the (B, 3, H, W) images in NHWC memory order."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class Streams:
    """The source (and target) streams of a run, each with its flip setting: ``next(device)``
    gives the step's ``{'source': ..., 'target': ...}`` batch."""

    def __init__(self, streams: dict[str, BatchStream], flips: dict[str, bool], channels_last: bool = False) -> None:
        self.streams, self.flips, self.channels_last = streams, flips, channels_last

    def next(self, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
        """The next batch of every stream, flipped where configured, on ``device``."""
        batch = {}
        for k, s in self.streams.items():
            b = next(s)
            batch[k] = to_device(hflip(b) if self.flips[k] else b, device, self.channels_last)
        return batch

    def state(self) -> dict[str, list[int]]:
        """Each stream's [epoch, offset], for the checkpoint."""
        return {k: s.state() for k, s in self.streams.items()}
