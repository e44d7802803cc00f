"""A UDA method = a base recipe + weighted terms, composed (no subclass per combination).

One step (the trainer calls it under autocast, then backward and the optimiser step):

    ctx, loss, logs = recipe(batch)                 # the recipe's passes and loss, a StepContext
    for term in terms:                              # in order; each may add passes (MIC, L_patch)
        if term.applies(ctx): loss += term.weight * term(ctx)
    shared updates (memory push)                    # after the terms: a batch never contrasts itself
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..models import Segmentor
from .context import Batch, Forward
from .recipes import Recipe
from .terms import SharedModules, Term
from .terms.base import Logs


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class UDAMethod(nn.Module):
    """Owns the student segmentor (``model``), the recipe (with its teacher), the terms and the
    modules they share. Only ``model`` is deployed (:meth:`export_model`).

    ``rare_class_sampling``: the trainer draws source images by rare class sampling (DAFormer).
    ``requires_clips``: every target batch must hold clips (``pipa_video``)."""

    student: Forward  # the student's forward: ``model``, or its DDP wrapper under torchrun

    def __init__(self, model: Segmentor, recipe: Recipe, terms: list[Term], shared: SharedModules | None = None,
                 rare_class_sampling: bool = False, requires_clips: bool = False, name: str = "") -> None:
        super().__init__()
        self.model, self.recipe = model, recipe
        if len({t.name for t in terms}) != len(terms):
            raise ValueError(f"term names must be unique, got {[t.name for t in terms]}")
        self.terms = nn.ModuleDict({t.name: t for t in terms})  # state-dict keys: terms.<name>.*
        self.shared = shared if shared is not None else SharedModules()
        self.rare_class_sampling, self.requires_clips, self.name = rare_class_sampling, requires_clips, name
        self.uses_target = recipe.uses_target
        self.debug: dict[str, Tensor] = {}  # the last step's debug-grid panels (StepContext.debug_images)
        self._ddp = False
        self.__dict__["student"] = model  # kept out of the module tree: state-dict keys do not change

    # -- the step -----------------------------------------------------------------------------
    def step(self, batch: Batch, iteration: int, micro: int = 0) -> tuple[Tensor, Logs]:
        """``batch``: ``{'source': {'image' (B,3,H,W), 'label' (B,H,W)}, 'target': {...}}`` ->
        (scalar loss = recipe loss + Σ weight · term, logs: 0-d tensors left on the device, or floats).
        No backward and no host synchronisation here. ``micro``: the micro-batch of this step
        (gradient accumulation), which only changes the step's random draws."""
        if self.requires_clips and "prev_image" not in batch.get("target", {}):
            raise ValueError(f"{self.name} needs target clips (a video dataset, e.g. data.target.clip_length=4)")
        if hasattr(self.recipe, "teacher_frames"):  # frames the terms on in this step need the teacher on
            self.recipe.teacher_frames = tuple(dict.fromkeys(
                k for t in self.terms.values() if iteration >= t.start for k in t.teacher_frames))
        ctx, loss, logs = self.recipe(batch, iteration, self.model, self.student, micro)
        for term in self.terms.values():
            if term.applies(ctx):
                value, term_logs = term(ctx)
                loss = loss + term.weight * value
                logs.update(term_logs)
            elif self._ddp and (idle := term.idle_loss(ctx)) is not None:
                loss = loss + idle
        for module in self.shared.members():
            logs.update(module.after_terms(ctx))
        self.debug = ctx.debug_images()  # small tensors only: the step's graph is not kept alive
        return loss, logs

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        """After the optimiser step: EMA updates of the teacher and of the terms' heads."""
        self.recipe.after_step(self.model, iteration)
        for part in [*self.shared.members(), *self.terms.values()]:
            part.after_step(iteration)

    # -- training plumbing ---------------------------------------------------------------------
    def trainable_heads(self) -> list[nn.Module]:
        """Training-only modules the optimiser trains besides the student (projection heads)."""
        return [m for part in [*self.shared.members(), *self.terms.values()] for m in part.trainable_modules()]

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float | None = None,
                     decay_norms: bool = True, layer_decay: float = 1.0) -> list[dict[str, Any]]:
        """Encoder at ``lr``; decoder, classifier and training heads at ``lr * head_lr_mult``. With
        ``decay_norms=False`` the parameters of normalisation layers get their own groups
        (``encoder_norm``, ``head_norm``) without weight decay, as in DAFormer/MIC. With
        ``layer_decay < 1`` and an encoder that has layers (``layer_of``, DINOv2), one encoder group
        per depth d of L blocks (``encoder_l{d}``, d = 0 the stem) at ``lr * layer_decay^(L - d)``;
        each group's ``lr_scale`` is that factor (the trainer's schedule keeps it)."""
        head_ids = {id(p) for p in self.model.head_parameters()}
        enc_named = [(n, p) for n, p in self.model.named_parameters() if id(p) not in head_ids and p.requires_grad]
        head = [p for p in self.model.head_parameters() if p.requires_grad]
        head += [p for m in self.trainable_heads() for p in m.parameters() if p.requires_grad]
        encoder = self.model.encoder
        if layer_decay < 1.0 and hasattr(encoder, "layer_of"):
            depth, by_depth = encoder.depth, {}
            for n, p in enc_named:
                d = encoder.layer_of(n)
                by_depth.setdefault(d, []).append(p)
            enc_groups = [{"params": ps, "lr": lr * layer_decay ** (depth - d), "lr_scale": layer_decay ** (depth - d),
                           "name": f"encoder_l{d}"} for d, ps in sorted(by_depth.items())]
        else:
            enc_groups = [{"params": [p for _, p in enc_named], "lr": lr, "name": "encoder"}]
        groups = [*enc_groups, {"params": head, "lr": lr * head_lr_mult, "name": "head"}]
        if decay_norms:
            return groups
        norm_ids = {id(p) for m in [self.model, *self.trainable_heads()] for mod in m.modules()
                    if isinstance(mod, NORM_LAYERS) for p in mod.parameters(recurse=False)}
        out = []
        for g in groups:
            plain = [p for p in g["params"] if id(p) not in norm_ids]
            norms = [p for p in g["params"] if id(p) in norm_ids]
            out.append({**g, "params": plain, **({} if weight_decay is None else {"weight_decay": weight_decay})})
            out.append({**g, "params": norms, "name": f"{g['name']}_norm", "weight_decay": 0.0})
        return out

    def wrap_student(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the student's and the heads' forwards with ``wrap(module)`` (DistributedDataParallel)."""
        self.__dict__["student"] = wrap(self.model)
        self._ddp = True
        for part in [*self.shared.members(), *self.terms.values()]:
            part.wrap(wrap)

    def compile_models(self, **kwargs: Any) -> None:
        """``torch.compile`` the segmentor passes of a step, in place (state-dict keys unchanged): the
        student, the EMA teacher and any frozen encoder the terms hold. The terms' small heads and
        samplers stay eager (their row counts change every step). Static shapes by default: a step
        feeds a few fixed sizes (the crop, the patch term's views), each compiled once."""
        kwargs.setdefault("dynamic", False)
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a compiler bug falls back to eager (with a warning)
        self.model.compile(**kwargs)
        teacher = getattr(self.recipe, "teacher", None)
        if teacher is not None:
            teacher.ema.compile(**kwargs)
        for term in self.terms.values():
            frozen = getattr(term, "imnet", None)
            if isinstance(frozen, nn.Module):
                frozen.compile(**kwargs)

    def export_model(self) -> Segmentor:
        """The deployable segmentor: training-only modules (teacher, heads, memory) are not part of it."""
        return self.model
