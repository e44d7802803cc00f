"""Batch streams: endless, resumable, rank-sharded iteration over a dataset (and rare class
sampling of source images), with the random horizontal flip of training batches."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def item_seed(stream_seed: int, rank: int, batch: int, slot: int) -> int:
    """The seed of one item's random crop: a function of where it sits in the stream, so a resumed
    stream (with any number of workers) crops exactly as an uninterrupted one."""
    return (stream_seed * 1_000_003 + rank * 7_919 + batch * 131 + slot) % (2**63)


class KeyedItems(Dataset):
    """A dataset indexed by ``(index, class, seed)``: the item's random crop comes from a generator
    seeded with ``seed``; with a class >= 0 (rare class sampling) the crop is re-drawn until it holds
    the class (datasets with ``sample``; others ignore both) and ``rcs_class`` is added."""

    def __init__(self, dataset: Dataset, crop_min_pixels: float = 0.0) -> None:
        self.dataset, self.crop_min_pixels = dataset, crop_min_pixels

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        index, cls, seed = key
        sample = getattr(self.dataset, "sample", None)
        if sample is None:
            item = dict(self.dataset[index])
        else:
            item = sample(index, cls, self.crop_min_pixels, torch.Generator().manual_seed(seed))
        if cls >= 0:
            item["rcs_class"] = cls
        return item


class RareClassBatches(Sampler):
    """Endless batches of ``(image, class, seed)`` keys drawn by rare class sampling, batch ``k``
    from a generator seeded by (seed, rank, k): the DataLoader's workers decode and crop them, and a
    stream resumed at batch ``k`` draws what the uninterrupted one drew."""

    def __init__(self, rcs: Any, batch_size: int, seed: int, rank: int, offset: int) -> None:
        self.rcs, self.batch_size, self.seed, self.rank, self.offset = rcs, batch_size, seed, rank, offset

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        k = self.offset
        while True:
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank * 104_729 + k)
            idx, classes = self.rcs.sample(self.batch_size, gen)
            yield [(i, c, item_seed(self.seed, self.rank, k, j)) for j, (i, c) in enumerate(zip(idx, classes))]
            k += 1


class BatchStream:
    """Endless, resumable stream of batches, decoded and cropped by ``num_workers`` DataLoader
    workers (pinned when ``pin_memory``): a ``DistributedSampler`` permutation per epoch (seeded, so
    every rank agrees) cut into batches, or with ``rcs`` (a :class:`~pipa.uda.rcs.RareClassSampler`)
    endless rare-class-sampled batches. ``state()`` = (epoch, batches taken); each item's crop is
    seeded by its place in the stream, so resume is exact whatever the worker count."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int, world: int,
                 num_workers: int = 0, epoch: int = 0, offset: int = 0, rcs: Any = None,
                 pin_memory: bool = False) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * world:
            raise ValueError(f"dataset of {n} items is smaller than one batch ({batch_size} x {world} ranks)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.num_workers, self.pin_memory = rank, world, num_workers, pin_memory
        self.epoch, self.offset = epoch, offset
        self.rcs = rcs
        self.items = KeyedItems(dataset, rcs.crop_min_pixels if rcs is not None else 0.0)
        self._it: Iterator | None = None

    def _loader(self, batches: Any) -> Iterator:
        # its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from an uninterrupted one
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(DataLoader(self.items, batch_sampler=batches, num_workers=self.num_workers, generator=gen,
                               pin_memory=self.pin_memory))

    def _start(self) -> None:
        if self.rcs is not None:
            self._it = self._loader(RareClassBatches(self.rcs, self.batch_size, self.seed, self.rank, self.offset))
            return
        sampler = DistributedSampler(self.dataset, self.world, self.rank, shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        idx = list(sampler)
        B = self.batch_size
        batches = [[(i, -1, item_seed(self.seed, self.rank, self.epoch * 1_000_003 + k, j)) for j, i in enumerate(idx[s:s + B])]
                   for k, s in enumerate(range(0, len(idx) - B + 1, B))]
        self._it = self._loader(batches[self.offset:])

    def __next__(self) -> dict[str, torch.Tensor]:
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
