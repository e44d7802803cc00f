"""Learning-rate schedule: linear warm-up, then polynomial decay (DAFormer's recipe)."""

from __future__ import annotations


def lr_factor(it: int, total: int, warmup: int, warmup_ratio: float = 1e-6, power: float = 1.0) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based).

    Poly: ``(1 - it/total) ** power``; during warm-up it is scaled by a linear ramp from
    ``warmup_ratio`` to 1 over ``warmup`` iterations (mmcv's linear warm-up)."""
    poly = max(0.0, 1.0 - it / total) ** power
    if warmup > 0 and it < warmup:
        k = (1 - it / warmup) * (1 - warmup_ratio)
        return poly * (1 - k)
    return poly
