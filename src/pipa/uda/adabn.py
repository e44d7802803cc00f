"""AdaBN: recompute batch-norm statistics on target images (no training)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def has_batch_norm(model: nn.Module) -> bool:
    """Does ``model`` hold any batch-norm layer (AdaBN has something to adapt)?"""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 16,
                            max_images: int | None = None) -> int:
    """Replace every BN layer's running mean/var by the average over ``dataset``'s images
    (cumulative average, momentum None). Returns the number of images used. Raises ValueError for
    a model without batch norm (AdaBN does not apply)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("AdaBN needs batch-norm layers; this model has none")
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.eval()
    for m in bns:
        m.train()
    n = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            model(batch["image"].to(device))
            n += batch["image"].shape[0]
            if max_images and n >= max_images:
                break
    finally:
        for m, (mom, _) in zip(bns, saved):
            m.momentum = mom
        model.train(was)
    return n
