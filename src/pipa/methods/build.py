"""``build_method(cfg, model)``: the method named by ``cfg.method.name`` as a recipe plus terms.

| name            | recipe                     | rare class sampling | terms                                   |
|-----------------|----------------------------|---------------------|-----------------------------------------|
| source_only     | SourceOnly                 |                     |                                         |
| source_only_aug | SourceOnly (augmented)     |                     |                                         |
| oracle          | SourceOnly (target labels) |                     |                                         |
| self_training   | SelfTraining (DACS)        |                     |                                         |
| daformer        | SelfTraining               | yes                 | feature_distance                        |
| mic             | SelfTraining               | yes                 | feature_distance, masked_consistency    |
| pipa            | ``method.pipa.base``'s     | as the base         | the base's + pixel, patch (+ temporal on clips) |
| pipa_video      | as pipa, target clips required                                                         |

A term whose weight is 0 is not built. ``method.terms`` appends more terms to any method.
"""

from __future__ import annotations

from typing import get_args

from ..config import Config, ConfigError, MethodName
from ..models import Segmentor
from .method import UDAMethod
from .recipes import Recipe, SelfTraining, SourceOnly
from .terms import TERMS, SharedModules, pixel_embedding

METHODS: tuple[str, ...] = get_args(MethodName)  # every value method.name may take

# (name, weight, start) of a method's own terms, read from their config sections
TermSpec = tuple[str, float, int]


def base_terms(cfg: Config, base: str) -> list[TermSpec]:
    """The terms that make ``base`` out of the self-training recipe (DAFormer's FD, MIC's masking)."""
    m = cfg.method
    specs: list[TermSpec] = []
    if base in ("daformer", "mic"):
        specs.append(("feature_distance", m.fd.weight, 0))
    if base == "mic":
        specs.append(("masked_consistency", m.mic.weight, 0))
    return specs


def pipa_terms(cfg: Config) -> list[TermSpec]:
    """L_pix, L_patch and L_temp with their weights and start iterations (``method.pipa.*``)."""
    p = cfg.method.pipa
    return [("pixel_contrast", p.pixel.weight, p.pixel.start), ("patch_contrast", p.patch.weight, p.patch.start),
            ("temporal_contrast", p.temporal.weight, p.temporal.start)]


def build_recipe(cfg: Config, model: Segmentor, name: str) -> Recipe:
    """The base recipe of method ``name`` (``pipa*`` take ``method.pipa.base``'s)."""
    m, seed = cfg.method, cfg.train.seed
    if name in ("source_only", "oracle", "source_only_aug"):
        return SourceOnly(m.aug, seed, augment_source=name == "source_only_aug")
    return SelfTraining(model, m.teacher, m.aug, seed, cfg.train.shared_encoder)


def method_terms(cfg: Config) -> list[TermSpec]:
    """The (name, weight, start) of every term of the configured method, its own first, then
    ``method.terms``; checked without building anything (the trainer calls it before indexing)."""
    name = cfg.method.name
    pipa = name in ("pipa", "pipa_video")
    specs = base_terms(cfg, cfg.method.pipa.base if pipa else name) + (pipa_terms(cfg) if pipa else [])
    own = {n for n, _, _ in specs}
    for i, extra in enumerate(cfg.method.terms):
        if extra.name in own:
            raise ConfigError(f"config key 'method.terms[{i}].name': '{extra.name}' is already a term of "
                              f"method '{name}' (set its weight in its own section)")
        if extra.name not in TERMS:
            raise ConfigError(f"config key 'method.terms[{i}].name': no term '{extra.name}' is registered "
                              f"(registered: {', '.join(sorted(TERMS))})")
        specs.append((extra.name, extra.weight, extra.start))
    return specs


def build_method(cfg: Config, model: Segmentor) -> UDAMethod:
    """The method of ``cfg.method.name`` plus ``cfg.method.terms``, around the student ``model``."""
    name = cfg.method.name
    base = cfg.method.pipa.base if name in ("pipa", "pipa_video") else name
    specs = [s for s in method_terms(cfg) if s[1] > 0]  # a term of weight 0 is not built
    shared = SharedModules()
    if any(n in ("pixel_contrast", "temporal_contrast") for n, _, _ in specs):
        pixel_embedding(cfg, model, shared)  # created first: its initial weights do not depend on term order
    terms = [TERMS[term](cfg, model, shared, weight, start) for term, weight, start in specs]
    return UDAMethod(model, build_recipe(cfg, model, base), terms, shared, rare_class_sampling=base in ("daformer", "mic"),
                     requires_clips=name == "pipa_video", name=name)
