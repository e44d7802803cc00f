"""How the deployed model's pixel features are organised on target images: a compactness figure
of merit (mean cosine similarity within classes vs between classes) and a 2-D projection.

The features are the decoder's fused map ``F`` (stride 4), what the contrastive terms shape
through their projection heads; the heads themselves are not part of the deployed model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..contrast.views import pool_labels
from ..core.constants import IGNORE_INDEX


@torch.no_grad()
def pixel_embeddings(model: torch.nn.Module, dataset: Dataset, num_classes: int, max_images: int = 64,
                     per_class: int = 300, seed: int = 0, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Unit feature vectors of labelled target cells, at most ``per_class`` per class (random,
    reproducible with ``seed``): (N, C) float32, (N,) int64."""
    was = model.training
    model.eval()
    feats, labels = [], []
    n = min(max_images, len(dataset))  # type: ignore[arg-type]
    try:
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            images = torch.stack([it["image"] for it in items])
            out = model(images)
            stride = images.shape[-1] // out.features.shape[-1]
            lab = pool_labels(torch.stack([it["label"] for it in items]), stride, num_classes)
            feats.append(out.features.float().permute(0, 2, 3, 1).reshape(-1, out.features.shape[1]))
            labels.append(lab.reshape(-1))
    finally:
        model.train(was)
    f, lab = torch.cat(feats), torch.cat(labels)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        rows = (lab == c).nonzero().squeeze(1)
        keep.append(rows[torch.randperm(rows.numel(), generator=g)[:per_class]])
    idx = torch.cat(keep)
    return F.normalize(f[idx], dim=1), lab[idx]


def compactness(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean cosine similarity of same-class pairs (``intra``, each class weighted equally, a vector
    never paired with itself) and of different-class pairs (``inter``), and ``gap = intra - inter``.
    ``features`` (N, D) unit rows, ``labels`` (N,)."""
    sim = features @ features.t()
    classes = [int(c) for c in labels.unique() if int(c) != IGNORE_INDEX]
    intra, inter = [], []
    for c in classes:
        m = labels == c
        n = int(m.sum())
        if n >= 2:
            block = sim[m][:, m]
            intra.append(float((block.sum() - block.diagonal().sum()) / (n * (n - 1))))
        others = (labels != c) & (labels != IGNORE_INDEX)
        if others.any():
            inter.append(float(sim[m][:, others].mean()))
    i = sum(intra) / len(intra) if intra else float("nan")
    o = sum(inter) / len(inter) if inter else float("nan")
    return {"intra": i, "inter": o, "gap": i - o}


def project_2d(features: Tensor) -> Tensor:
    """Principal-component projection to 2-D, (N, D) -> (N, 2)."""
    x = features - features.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].t()
