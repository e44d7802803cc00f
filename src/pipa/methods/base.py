"""The UDA method interface: a small orchestrator returning ``(loss, logs)`` per step.

A method owns the student segmentor (``self.model``) and any training-only modules (teacher,
heads). It never calls ``backward`` or an optimiser: the trainer does, so AMP, DDP and gradient
accumulation stay standard. ``self.student`` is what ``step`` calls for student forwards; the
trainer may replace it with a DDP wrapper of ``self.model`` (it is kept out of the module tree,
so state-dict keys do not change)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from ..config import Config
from ..models import Segmentor

Batch = dict[str, dict[str, Tensor]]


def step_generator(seed: int, iteration: int) -> torch.Generator:
    """A generator per (seed, rank, iteration): mixing and augmentation draws are reproducible
    on resume and differ between ranks."""
    from ..engine.distributed import rank

    return torch.Generator().manual_seed(seed * 1_000_003 + rank() * 10_007 + iteration)


class UDAMethod(nn.Module):
    uses_target: ClassVar[bool] = False  # does step() need unlabelled target batches?
    rare_class_sampling: ClassVar[bool] = False  # draw source images by rare class sampling?

    def __init__(self, cfg: Config, model: Segmentor) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.__dict__["student"] = model

    def wrap_student(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the student forward with ``wrap(model)`` (e.g. DistributedDataParallel)."""
        self.__dict__["student"] = wrap(self.model)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser updates (the student, plus training heads)."""
        return [self.model]

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """Encoder at ``lr``; decoder, classifier and any training heads at ``lr * head_lr_mult``."""
        head_ids = {id(p) for p in self.model.head_parameters()}
        enc = [p for p in self.model.parameters() if id(p) not in head_ids and p.requires_grad]
        head = [p for p in self.model.head_parameters() if p.requires_grad]
        for m in self.trainable_modules():
            if m is not self.model:
                head += [p for p in m.parameters() if p.requires_grad]
        return [
            {"params": enc, "lr": lr, "name": "encoder"},
            {"params": head, "lr": lr * head_lr_mult, "name": "head"},
        ]

    def step(self, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        """Called after the optimiser step (EMA updates and the like)."""

    def export_model(self) -> Segmentor:
        """The deployable segmentor (training-only modules are not part of it)."""
        return self.model
