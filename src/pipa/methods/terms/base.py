"""The term interface: one additional objective on top of a base recipe.

A term is a small ``nn.Module`` with ``forward(ctx) -> (loss, logs)``: it reads the step's
:class:`~pipa.methods.context.StepContext`, may run extra passes (through ``ctx.student`` /
``ctx.teacher``), and returns its *unweighted* scalar loss; the method adds ``weight · loss`` from
iteration ``start`` on. Training-only modules (projection heads, EMA copies, a frozen encoder) are
the term's own submodules: they are saved in the checkpoint and never exported."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..context import StepContext, cells

Logs = dict[str, Tensor | float]  # values stay on the device; the trainer reads them every log_interval


class Term(nn.Module):
    """Base class of the terms. Subclasses implement :meth:`forward`; the rest has defaults."""

    name: str = "term"
    # target frames besides ``image`` that the term needs the teacher on (e.g. ``prev_image``): the
    # recipe runs them in its own teacher pass, one batch (``StepContext.teacher_frames``)
    teacher_frames: tuple[str, ...] = ()

    def __init__(self, weight: float, start: int = 0) -> None:
        super().__init__()
        self.weight, self.start = float(weight), int(start)

    def applies(self, ctx: StepContext) -> bool:
        """Is the term on in this step? (Default: from iteration ``start`` on.)"""
        return ctx.iteration >= self.start

    def forward(self, ctx: StepContext) -> tuple[Tensor, Logs]:  # pragma: no cover - interface
        """-> (unweighted scalar loss, logs ``{'loss/<name>': value, ...}``)."""
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the optimiser trains (at the head learning rate)."""
        return []

    def wrap(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the forwards of the trainable modules (DistributedDataParallel under torchrun)."""

    def idle_loss(self, ctx: StepContext) -> Tensor | None:
        """Under DDP, a zero-valued use of the trainable modules for steps where the term is off
        (every parameter of a DDP module must take part in every step)."""
        return None

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        """Called after the optimiser step (EMA updates of the term's heads)."""


def zero_use(project: Callable[[Tensor], Tensor], ctx: StepContext) -> Tensor:
    """``0 · project(two feature rows)``: a DDP-visible, value-free use of a projection head."""
    feats = ctx.out_mixed.features if ctx.out_mixed is not None else ctx.out_source.features
    return project(cells(feats)[:2]).sum() * 0


class SharedModule(nn.Module):
    """A training-only module used by several terms (the pixel embedding with the semantic memory).
    The method calls :meth:`after_terms` once per step after every term ran, and
    :meth:`after_step` after the optimiser step."""

    def after_terms(self, ctx: StepContext) -> Logs:
        """Per-step update that must follow the terms (e.g. the memory push); returns logs."""
        return {}

    def trainable_modules(self) -> list[nn.Module]:
        return []

    def wrap(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the forwards of the trainable modules (DDP)."""

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        """Called after the optimiser step."""


class SharedModules(nn.ModuleDict):
    """The :class:`SharedModule` s of a method, created once by the first term that asks and
    registered once, at the method (terms keep plain references)."""

    def get_or_create(self, key: str, make: Callable[[], SharedModule]) -> SharedModule:
        """The module under ``key``, made with ``make()`` and registered on first use."""
        if key not in self:
            self[key] = make()
        module = self[key]
        assert isinstance(module, SharedModule)
        return module

    def members(self) -> list[SharedModule]:
        """The shared modules, in creation order."""
        return [m for m in self.values() if isinstance(m, SharedModule)]
