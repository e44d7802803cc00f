"""Rare class sampling (DAFormer): sample a class by ``P(c) ∝ exp((1 - f_c) / T)``, then an image
that contains it. Class statistics are computed once per dataset and cached next to the run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..core.constants import IGNORE_INDEX


def class_pixel_counts(dataset: Dataset, num_classes: int) -> Tensor:
    """(N, K) int64 pixel count of each class in each image (255 not counted)."""
    labels = getattr(dataset, "labels", None)
    rows = []
    if isinstance(labels, Tensor) and getattr(dataset, "clip_length", 1) == 1:  # in-memory fast path
        for lab in labels[:, 0]:
            lab = lab.long().flatten()
            rows.append(torch.bincount(lab[lab != IGNORE_INDEX], minlength=num_classes)[:num_classes])
        return torch.stack(rows)
    native = getattr(dataset, "label", None)  # real datasets: mapped labels at native resolution, no crop
    for i in range(len(dataset)):  # type: ignore[arg-type]
        lab = (torch.from_numpy(native(i).astype("int64")) if callable(native) else dataset[i]["label"].long()).flatten()
        rows.append(torch.bincount(lab[lab != IGNORE_INDEX], minlength=num_classes)[:num_classes])
    return torch.stack(rows)


def cached_class_counts(dataset: Dataset, num_classes: int, cache: Path | None, key: str) -> Tensor:
    """:func:`class_pixel_counts`, read from / written to ``cache`` (a JSON file) when given."""
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key and len(data.get("counts", [])) == len(dataset):  # type: ignore[arg-type]
            return torch.tensor(data["counts"], dtype=torch.int64)
    counts = class_pixel_counts(dataset, num_classes)
    if cache is not None:
        from ..core.io import atomic_write

        text = json.dumps({"key": key, "counts": counts.tolist()})
        atomic_write(cache, lambda p: Path(p).write_text(text))
    return counts


def rcs_probabilities(counts: Tensor, temperature: float) -> Tensor:
    """(N, K) counts -> (K,) class sampling probabilities; classes never seen get 0."""
    total = counts.sum(0).double()
    freq = total / total.sum().clamp_min(1)
    logits = (1 - freq) / temperature
    logits[total == 0] = float("-inf")
    return torch.softmax(logits, 0)


class RareClassSampler:
    """Draws ``(image index, class)`` pairs. Images qualify for class c if they hold at least
    ``min_pixels`` pixels of it. Deterministic given the generator."""

    def __init__(self, counts: Tensor, temperature: float = 0.01, min_pixels: int = 16,
                 min_crop_ratio: float = 0.0) -> None:
        self.crop_min_pixels = min_pixels * min_crop_ratio  # a crop must hold more than this of the class
        self.probs = rcs_probabilities(counts, temperature)
        self.images = [torch.nonzero(counts[:, c] >= min_pixels).flatten() for c in range(counts.shape[1])]
        for c in range(counts.shape[1]):
            if self.images[c].numel() == 0:
                self.probs[c] = 0.0
        if self.probs.sum() <= 0:
            raise ValueError("rare class sampling found no class with enough pixels in any image")
        self.probs = self.probs / self.probs.sum()

    def sample(self, n: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
        """Draw ``n`` classes by ``P(c)``, then for each an image holding it: (image indices, classes)."""
        classes = torch.multinomial(self.probs.float(), n, replacement=True, generator=generator).tolist()
        idx = []
        for c in classes:
            pool = self.images[c]
            idx.append(int(pool[torch.randint(pool.numel(), (1,), generator=generator)]))
        return idx, classes
